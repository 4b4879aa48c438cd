"""Liveness canary for the Triton container: one tiny real inference, stdlib only.

Triton 2.51 never restarts a crashed Python-backend stub, and its live/ready endpoints stay 200 while
every inference fails; this probe fails then, so the orchestrator restarts the container.
Exit 0: the model answered with images. Exit 1: anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request


def tensor(name: str, datatype: str, shape: list[int], data: list[object]) -> dict[str, object]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def request_body(side: int) -> dict[str, object]:
    return {
        "inputs": [
            tensor("prompt", "BYTES", [1, 1], ["canary"]),
            tensor("image", "UINT8", [1, side, side, 3], [127] * (side * side * 3)),
            tensor("negative_prompt", "BYTES", [1, 1], [""]),
            tensor("strength", "FP32", [1, 1], [1.0]),
            tensor("num_inference_steps", "INT32", [1, 1], [1]),
            tensor("guidance_scale", "FP32", [1, 1], [1.0]),
            tensor("num_images_per_prompt", "INT32", [1, 1], [1]),
            tensor("seed", "INT64", [1, 1], [0]),
            tensor("scheduler", "BYTES", [1, 1], [""]),
        ],
        "outputs": [{"name": "seeds"}],
    }


def probe(url: str, model: str = "sd_img2img", size: int = 64, timeout: float = 15.0) -> str | None:
    """One canary inference; None when the model answered with images, else why not (Triton's own
    error text included, e.g. "Stub process ... is not healthy"). embedded/supervisor.py uses it too."""
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/infer",
        data=json.dumps(request_body(size)).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - our own server
            outputs = json.load(answer).get("outputs", [])
    except urllib.error.HTTPError as exc:
        detail = exc.read(2000).decode(errors="replace")
        return f"HTTP {exc.code}: {detail}"
    except Exception as exc:  # any failure is a failed probe
        return f"{type(exc).__name__}: {exc}"
    if not any(o.get("name") == "seeds" and o.get("data") == [0] for o in outputs):
        return f"unexpected answer {outputs}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default="127.0.0.1:8000", help="Triton HTTP address")
    parser.add_argument("--model", default="sd_img2img")
    parser.add_argument("--size", type=int, default=64, help="image side (SD 1.5's smallest is 64)")
    parser.add_argument("--timeout", type=float, default=15.0)
    args = parser.parse_args(argv)
    failure = probe(args.url, args.model, args.size, args.timeout)
    if failure is not None:
        print(f"canary failed: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
