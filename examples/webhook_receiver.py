"""A webhook receiver to try the service locally: checks each delivery's signature, saves its images.

    SD_WEBHOOK_SECRET=whsec_... .venv/bin/python examples/webhook_receiver.py 9001 [out-dir]

Needs the client package (installed in .venv by `make setup`). Deliveries with a bad signature get 400.
"""

from __future__ import annotations

import base64
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from sd_img2img_client import WebhookVerificationError, verify_webhook

SECRET = os.environ["SD_WEBHOOK_SECRET"]
OUT = Path(sys.argv[2] if len(sys.argv) > 2 else ".")
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            payload = verify_webhook(SECRET, body, dict(self.headers.items()))
        except WebhookVerificationError as exc:
            print(f"rejected delivery {self.headers.get('webhook-id')}: {exc}", flush=True)
            self.send_response(400)
            self.end_headers()
            return
        run_id, status = payload["run_id"], payload["status"]
        if status == "succeeded":
            extension = EXTENSIONS.get(payload.get("output_format", "png"), "png")
            for seed, image in zip(payload["seeds"], payload["result"], strict=True):
                path = OUT / f"{run_id}_{seed}.{extension}"
                path.write_bytes(base64.b64decode(image))
                print(f"verified {self.headers['webhook-id']}: saved {path}", flush=True)
        else:
            print(f"verified {self.headers['webhook-id']}: run {status}: {payload.get('error')}", flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet access log
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9001
    print(f"listening on http://127.0.0.1:{port}/hook", flush=True)
    HTTPServer(("127.0.0.1", port), Receiver).serve_forever()
