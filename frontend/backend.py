"""What the frontend needs from the model servers: the ``Backend`` Protocol, beside ``store.RunStore``.

A backend is one or more pods (model servers), each a ``Pod``. ``fleet.Fleet`` places each run on a pod
and follows it there; its pods are ``triton_backend.TritonPod`` (the only ``tritonclient`` importer).
The API tests' scripted backend implements the same Protocols, one pod that is its own backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .generation import Generated, GenerationInput, PodLoad, Progress
from .health import BackendHealth
from .model_card import ModelCard


class QueueDeadlineExpired(Exception):
    """The server dropped the request from its queue at the per-request timeout: it never reached the model."""


class CanceledByServer(Exception):
    """The server cancelled the request (Triton's CANCELLED) without our asking: the run ends ``canceled``,
    as one canceled by request does, not as an outage to retry."""


class Generator(Protocol):
    async def generate(
        self,
        job: GenerationInput,
        *,
        timeout_s: float | None = None,
        request_id: str = "",
        queue_timeout_s: float | None = None,
    ) -> Generated:
        """Generate ``job``'s images. ``queue_timeout_s`` bounds the wait in the server's queue only
        (``QueueDeadlineExpired``); cancelling the awaiting task cancels the call."""
        ...

    async def progress(self, request_id: str) -> Progress | None:
        """The progress posted for ``request_id`` while it is in the model; None otherwise (best effort)."""
        ...

    async def close(self) -> None: ...


class Pod(Generator, Protocol):
    """One model server."""

    address: str  # what names it in /readyz and in metrics (host:port)
    health: BackendHealth  # every call's outcome: what /readyz and placement judge by

    async def load(self) -> PodLoad | None:
        """The load the pod reports (every frontend's runs there), or None when it reports none."""
        ...

    async def is_model_ready(self) -> bool: ...


class Backend(Generator, Protocol):
    """Where runs are generated, on whichever pod runs them."""

    def pods(self) -> Sequence[Pod]:
        """Every pod now known (readiness probes each)."""
        ...

    async def refresh(self) -> None:
        """Look after the pods: called at start and every ``SD_POD_CHECK_S`` (a Service resolved again)."""
        ...

    def model_card(self) -> ModelCard | None:
        """What the served model says it is, as last read by ``refresh``; None while unknown."""
        ...
