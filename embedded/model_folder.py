"""A builder's model folder: a diffusers folder plus a stamp file saying which build of ours made it.

The one rule set for every folder a builder writes (the tiny model, the full-size random SD 1.5, and
the GPU command that builds the latter on the device): an up-to-date stamp means built; a folder with
files but no stamp is someone else's (``MODEL_DIR`` may name a real checkpoint) and is never written;
a build goes to a staging folder beside it and is renamed into place, so one killed halfway leaves no
stampless folder that the rule above would then refuse forever.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelFolder:
    stamp_name: str  # the stamp file in the folder, e.g. "tiny_model_build.json"
    version: int  # bump when the build changes: older builds are then rebuilt

    def stamp(self, folder: Path) -> dict[str, Any] | None:
        try:
            record = json.loads((folder / self.stamp_name).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def is_built(self, folder: Path) -> bool:
        """Ours, and of this version."""
        record = self.stamp(folder)
        return record is not None and record.get("version") == self.version

    def is_someone_elses(self, folder: Path) -> bool:
        """Files there, but not ours: a folder no builder may write."""
        return folder.exists() and any(folder.iterdir()) and not (folder / self.stamp_name).exists()

    def write(self, folder: Path, save: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """``save(staging)`` writes the model and returns what the stamp records (besides the version);
        then the staging folder replaces ``folder``. Returns the stamp."""
        if self.is_someone_elses(folder):
            raise FileExistsError(f"refusing to write into {folder}: it holds files this builder did not make")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.building-", dir=folder.parent))
        try:
            record = {"version": self.version, **save(staging)}
            (staging / self.stamp_name).write_text(json.dumps(record, indent=1))
            if folder.exists():
                shutil.rmtree(folder)  # empty, or an older build of ours (checked above)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return record
