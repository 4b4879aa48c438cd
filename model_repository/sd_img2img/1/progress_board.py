"""Where a request's progress (its step, and a small preview now and then) is posted while it runs.

The model answers each request once (Triton's unary HTTP and gRPC need that), so progress travels on
a side channel: the step engine posts it here, one small file per request in a folder of shared memory,
and the ``sd_img2img_progress`` model, beside it in the same model repository and so in the same
tritonserver, reads it back when a client asks by request id. A post replaces the last one atomically
(write, then rename), so a reader never sees half a post. No torch, no Triton: unit-tested on its own.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SHM = Path("/dev/shm")  # noqa: S108 - our own prefixed folder only
LOAD_FILE = "load.json"  # the model's load, beside the posts (named by hashes: never this)


@dataclass(frozen=True)
class Progress:
    step: int  # denoising steps done (UNet forwards, for PNDM N + 1 in all)
    total: int
    preview: bytes = b""  # a small JPEG of the current estimate, or b"" (not every post carries one)


def board_folder(model_repository: str | Path) -> Path:
    """One folder per model repository on this machine: both models of one server find the same one,
    and two servers on one machine (tests, benchmarks) never share one."""
    repository = Path(model_repository).resolve()
    if (repository / "config.pbtxt").exists():  # Triton passes the model's own folder
        repository = repository.parent
    digest = hashlib.sha256(str(repository).encode()).hexdigest()[:16]
    root = SHM if SHM.is_dir() and os.access(SHM, os.W_OK) else Path(tempfile.gettempdir())
    return root / f"sd_img2img_progress_{digest}"


class ProgressBoard:
    def __init__(self, folder: Path, *, create: bool = True) -> None:
        """``create=False`` for a reader (sd_img2img_progress): only the model that posts makes the folder."""
        self.folder = folder
        if create:
            folder.mkdir(parents=True, exist_ok=True)

    def _path(self, request_id: str) -> Path:
        return self.folder / (hashlib.sha256(request_id.encode()).hexdigest() + ".json")

    def post(self, request_id: str, progress: Progress) -> None:
        """Replace the request's post (the caller passes the last preview again between new ones)."""
        record = {
            "step": progress.step,
            "total": progress.total,
            "preview": base64.b64encode(progress.preview).decode(),
        }
        path = self._path(request_id)
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(json.dumps(record))
        os.replace(staging, path)

    def read(self, request_id: str) -> Progress | None:
        try:
            record = json.loads(self._path(request_id).read_text())
        except (OSError, ValueError):
            return None
        return Progress(int(record["step"]), int(record["total"]), base64.b64decode(record["preview"]))

    def post_load(self, load: dict[str, object]) -> None:
        """Replace the model's load (rows active and waiting, sizes held): what placement across pods reads."""
        staging = self.folder / f"{LOAD_FILE}.{os.getpid()}.tmp"
        staging.write_text(json.dumps(load))
        os.replace(staging, self.folder / LOAD_FILE)

    def read_load(self) -> dict[str, object] | None:
        try:
            load = json.loads((self.folder / LOAD_FILE).read_text())
        except (OSError, ValueError):
            return None
        return load if isinstance(load, dict) else None

    def remove(self, request_id: str) -> None:
        self._path(request_id).unlink(missing_ok=True)

    def close(self) -> None:
        """Remove the folder if nothing is left in it (it is in /dev/shm: every test server's copied
        repository has one, which would otherwise stay until reboot)."""
        with contextlib.suppress(OSError):  # posts left (a reader may still want them) or already gone
            (self.folder / LOAD_FILE).unlink(missing_ok=True)
            self.folder.rmdir()

    def sweep(self, older_than_s: float, now: float | None = None) -> int:
        """Remove posts nobody removed (a stub killed mid-run); returns how many."""
        cutoff = (time.time() if now is None else now) - older_than_s
        removed = 0
        for path in self.folder.glob("*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                pass
        return removed
