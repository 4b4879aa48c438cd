"""Where the frontend's CPU goes under load: py-spy samples of the frontend process, summarised.

``make bench`` attaches ``py-spy record --threads -f raw`` to the warmed-up frontend while it is loaded;
this module turns the raw stacks into shares per thread kind (event loop, worker threads) and the
hottest functions. Best effort: where py-spy may not attach (no ptrace), the report says so.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


def record(pid: int, output: Path, seconds: float, rate: int = 100) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds``; wait on the returned process, then ``summarise`` the file."""
    py_spy = Path(sys.executable).parent / "py-spy"
    command = [
        str(py_spy), "record", "--pid", str(pid), "--threads", "--nonblocking", "--format", "raw",
        "--rate", str(rate), "--duration", str(max(1, round(seconds))), "--output", str(output),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _thread_kind(frame: str) -> str:
    name = frame.split(": ", 1)[-1]
    if name == "MainThread":
        return "event loop (MainThread)"
    if name.startswith("asyncio_"):
        return "worker threads (asyncio.to_thread)"
    return "other threads"


def _function(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    for marker in ("site-packages/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{match['name']} ({Path(file).name if '/' not in file else file})"


def summarise(raw: str, top: int = 12) -> dict[str, Any]:
    threads: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        frames, count = match["stack"].split(";"), int(match["count"])
        total += count
        threads[_thread_kind(frames[0])] += count
        leaves[_function(frames[-1])] += count
    return {
        "samples": total,
        "threads": {kind: n / total for kind, n in threads.most_common()} if total else {},
        "top_self": [(name, n / total) for name, n in leaves.most_common(top)] if total else [],
    }
