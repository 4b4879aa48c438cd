"""A launcher's stop signals: SIGINT, SIGTERM and SIGHUP are one handler (why ``test_launchers_stop`` sends
serve-replicas and serve-fleet one signal each), and the first one ignores the rest while cleanup runs."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from embedded.lifecycle import STOP_SIGNALS, Stopped, stop_on_signals


@pytest.fixture
def restored() -> Iterator[None]:
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_every_stop_signal_raises_stopped_once_then_all_are_ignored(restored: None, signum: int) -> None:
    stop_on_signals()
    handlers = {signal.getsignal(s) for s in STOP_SIGNALS}
    assert len(handlers) == 1  # one handler for all three
    with pytest.raises(Stopped) as stopped:
        signal.raise_signal(signum)
    assert stopped.value.signum == signum
    assert all(signal.getsignal(s) == signal.SIG_IGN for s in STOP_SIGNALS)
