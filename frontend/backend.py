"""What the frontend needs from the model server: the ``Backend`` Protocol, beside ``store.RunStore``.

One implementation serves (``triton_backend.TritonBackend``, the only ``tritonclient`` importer); the API
tests' scripted backend implements the same Protocol, so neither re-declares the other's signature.
"""

from __future__ import annotations

from typing import Protocol

from .generation import Generated, GenerationInput, Progress
from .health import BackendHealth


class QueueDeadlineExpired(Exception):
    """The server dropped the request from its queue at the per-request timeout: it never reached the model."""


class CanceledByServer(Exception):
    """The server cancelled the request (Triton's CANCELLED) without our asking: the run ends ``canceled``,
    as one canceled by request does, not as an outage to retry."""


class Backend(Protocol):
    health: BackendHealth  # every call's outcome: what /readyz judges by

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

    async def is_model_ready(self) -> bool: ...

    async def close(self) -> None: ...
