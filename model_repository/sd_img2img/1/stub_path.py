"""The Python backend stub's ``sys.path``, set before any third-party import (standard library only).

The stub's embedded interpreter ignores ``PYTHONPATH``, which the embedded launcher uses to reach the
project's virtualenv; without this, a model imports the interpreter's own numpy (2.x here), which
Triton 2.51's stub misreads: output tensors arrive empty. A no-op in the Triton container, where the
packages are installed system-wide.
"""

from __future__ import annotations

import os
import site
import sys


def honour_pythonpath() -> None:
    """Put the ``PYTHONPATH`` folders (and their ``.pth`` entries) first on ``sys.path``."""
    before = list(sys.path)
    for folder in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if folder and folder not in before:
            site.addsitedir(folder)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before
