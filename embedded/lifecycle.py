"""How our launchers stop: on SIGTERM, SIGINT or SIGHUP their cleanup runs, and their servers die with them.

Every server a launcher starts (tritonserver, PostgreSQL, a frontend) runs in its own session, so a signal
to the launcher's process group (a terminal's Ctrl-C, ``kill -- -PGID``, a CI timeout) reaches only the
launcher, which stops them in order: frontends first (they drain into the store), then Triton, then the
store. Should the launcher itself die without its cleanup (SIGKILL, a crash), Linux's parent-death
signal stops each server anyway.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


class Stopped(KeyboardInterrupt):
    """A stop signal, raised like Ctrl-C's KeyboardInterrupt so ``finally`` blocks and ``except
    KeyboardInterrupt`` handle SIGTERM and SIGHUP the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_on_signals() -> None:
    """In a launcher's ``main()``: SIGINT, SIGTERM and SIGHUP raise ``Stopped``. The first one also sets
    all three to ignored, so a second signal cannot cut the cleanup short (each stop has its own timeout)."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        ignore_stop_signals()
        raise Stopped(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)


def ignore_stop_signals() -> None:
    """For a cleanup that must run to its end (children started after this inherit the ignoring)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the child's stop signals back at their defaults (a launcher in its cleanup ignores
    them), and, started from the main thread on Linux, ``signum`` sent to it when that thread ends
    (PR_SET_PDEATHSIG follows the thread, so a server a worker thread restarts does not get it)."""
    libc = _LIBC if threading.current_thread() is threading.main_thread() else None
    parent = os.getpid()

    def arm() -> None:
        for stop in STOP_SIGNALS:
            signal.signal(stop, signal.SIG_DFL)
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the prctl: nobody will send it
                os.kill(os.getpid(), signum)

    return arm


def spawn_server(command: list[str], *, die_signal: int = signal.SIGTERM, **popen: Any) -> subprocess.Popen[Any]:
    """A server process in its own session (only its launcher signals it), stopped by ``die_signal`` if the
    launcher dies first."""
    return subprocess.Popen(command, start_new_session=True, preexec_fn=die_with_parent(die_signal), **popen)  # noqa: PLW1509 - prctl only
