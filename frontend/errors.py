"""Domain errors and the one table that maps them to HTTP statuses and JSON bodies.

Every error answer has the shape ``{"error": {"code", "message", "param"}}``.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "param": self.param}}


class InvalidJson(ApiError):
    status, code = 400, "invalid_json"


class InvalidRequest(ApiError):
    """A field is missing, of the wrong type or out of bounds; ``param`` names it."""

    status, code = 422, "invalid_request"


class UnsupportedField(ApiError):
    """The served model does not take this field (``param``): it belongs to another kind of model."""

    status, code = 400, "unsupported_field"


class UnsupportedImage(ApiError):
    """The bytes are not an image format we accept."""

    status, code = 415, "unsupported_image"


class InvalidImage(ApiError):
    """An accepted format that cannot be decoded (truncated, corrupt, a decompression bomb)."""

    status, code = 422, "invalid_image"


class FileUrlFailed(ApiError):
    """``file_url`` was refused by policy or could not be fetched."""

    status, code = 422, "file_url_failed"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class NotFound(ApiError):
    status, code = 404, "not_found"

    @classmethod
    def run(cls, run_id: str) -> NotFound:
        """No such run for this API key (another key's run is not ours to reveal)."""
        return cls(f"no run {run_id!r} for this API key", param="run_id")


class ResultExpired(ApiError):
    """The run finished, but its result was deleted after ``SD_RESULT_TTL_S``: run it again (same seed, same images)."""

    status, code = 410, "result_expired"

    def __init__(self, message: str, *, run: dict[str, Any]) -> None:
        super().__init__(message, param="run_id")
        self.run = run

    def body(self) -> dict[str, Any]:
        return {**self.run, **super().body()}


class _WithRun(ApiError):
    """An error about a run that carries the run's view (``error.run``)."""

    def __init__(self, message: str, *, run: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(message, param="run_id", headers=headers)
        self.run = run

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"]["run"] = self.run
        return body


class RunFinished(_WithRun):
    """Cancel of a run already in a final state; ``error.run`` is that state."""

    status, code = 409, "run_finished"


class RunCanceled(_WithRun):
    """A synchronous run was canceled (on request, or past its Cancel-After while running)."""

    status, code = 409, "run_canceled"


class RunAborted(_WithRun):
    """A synchronous run's Cancel-After passed before it reached the model."""

    status, code = 409, "run_aborted"


class IdempotencyKeyInUse(ApiError):
    """The first request with this Idempotency-Key is still running: retry after Retry-After."""

    status, code = 409, "idempotency_key_in_use"


class IdempotencyKeyReused(ApiError):
    """This Idempotency-Key was used with another request body."""

    status, code = 422, "idempotency_key_reused"


class RateLimited(ApiError):
    """This API key is past its runs in flight or its request rate: retry after Retry-After."""

    status, code = 429, "rate_limited"


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"


class BackendUnavailable(ApiError):
    """Triton is down, not ready, or its queue is full: try again later."""

    status, code = 503, "backend_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class StoreUnavailable(ApiError):
    """The run store's database cannot be reached now (a failover, a restart): try again later.

    Raised by the store engines for a connection lost or refused mid-call, which may or may not have
    taken effect: a run's own writes are retried (each is safe to repeat), anything else answers 503."""

    status, code = 503, "store_unavailable"

    def __init__(
        self, message: str = "the run store cannot be reached now; retry later", *, retry_after_s: int = 2
    ) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class BackendTimeout(ApiError):
    status, code = 504, "backend_timeout"


class GenerationFailed(ApiError):
    status, code = 500, "generation_failed"


# The table, for the docs and the OpenAPI document: (status, code, meaning).
ERROR_TABLE: list[tuple[int, str, str]] = [
    (cls.status, cls.code, (cls.__doc__ or cls.__name__).strip().splitlines()[0])
    for cls in (
        InvalidJson,
        InvalidRequest,
        UnsupportedField,
        UnsupportedImage,
        InvalidImage,
        FileUrlFailed,
        PayloadTooLarge,
        Unauthorized,
        NotFound,
        ResultExpired,
        RunFinished,
        RunCanceled,
        RunAborted,
        IdempotencyKeyInUse,
        IdempotencyKeyReused,
        RateLimited,
        MethodNotAllowed,
        BackendUnavailable,
        StoreUnavailable,
        BackendTimeout,
        GenerationFailed,
    )
]
