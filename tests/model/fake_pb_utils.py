"""A stand-in for ``triton_python_backend_utils`` with just what ``model.py`` uses."""

from __future__ import annotations

import threading
import types
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1) -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class TritonModelException(Exception):
    pass


@dataclass
class Tensor:
    name: str
    array: np.ndarray

    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class ResponseSender:
    """Records what the model sends; ``final`` is set once the final response came (any thread)."""

    def __init__(self) -> None:
        self.responses: list[InferenceResponse] = []
        self.final = threading.Event()

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self.final.is_set():
            raise TritonModelException("a response was sent after the final one")
        if response is not None:
            self.responses.append(response)
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self.final.set()


@dataclass
class InferenceRequest:
    inputs: dict[str, np.ndarray]
    cancelled: bool = False
    sender: ResponseSender = field(default_factory=ResponseSender)
    id: str = ""
    # Cancelled from the n-th time the model asks on (a client that gives up while its request runs).
    cancelled_from_check: int | None = None
    checks: int = 0
    timeout_us: int = 0  # the request's own Triton timeout (the frontend's Cancel-After); 0 = none

    def is_cancelled(self) -> bool:
        self.checks += 1
        if self.cancelled_from_check is not None and self.checks >= self.cancelled_from_check:
            self.cancelled = True
        return self.cancelled

    def request_id(self) -> str:
        return self.id

    def timeout(self) -> int:
        return self.timeout_us

    def get_response_sender(self) -> ResponseSender:
        return self.sender


class InferenceResponse:
    """As the real one: the error is read with ``error()`` (a method, not an attribute) or ``has_error()``."""

    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None) -> None:
        self.output_tensors = list(output_tensors or [])
        self._error = error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def output(self, name: str) -> np.ndarray:
        return next(t.array for t in self.output_tensors if t.name == name)


class MetricFamily:
    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.description, self.kind = name, description, kind
        self.metrics: list[Metric] = []

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> Metric:  # noqa: N802 - the real API's name
        if (self.kind == MetricFamily.HISTOGRAM) != (buckets is not None):
            raise TritonModelException("Failed to create metric. Missing required buckets.")
        metric = Metric(labels, weakref.ref(self))
        self.metrics.append(metric)
        return metric


class Metric:
    made: list[Metric] = []  # every metric a model made, for tests to read

    def __init__(self, labels: dict[str, str], family: weakref.ref[MetricFamily]) -> None:
        self.labels, self.value, self._family = labels, 0.0, family
        self.observed: list[float] = []
        self.name = family().name  # type: ignore[union-attr]
        Metric.made.append(self)

    def increment(self, value: float) -> None:
        self._check()
        self.value += value

    def set(self, value: float) -> None:
        self._check()
        self.value = value

    def observe(self, value: float) -> None:
        self._check()
        self.observed.append(value)

    def _check(self) -> None:
        if self._family() is None:  # as Triton: a metric whose family was garbage-collected refuses
            raise TritonModelException("Invalid metric operation as the corresponding 'MetricFamily' has been deleted")


class Logger:
    lines: list[str] = []

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.lines.append(message)

    log_warn = log_error = log_verbose = log_info


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    array = request.inputs.get(name)
    return None if array is None else Tensor(name, array)


def as_module() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    for name, value in dict(globals()).items():
        if not name.startswith("_") and name not in {"annotations", "types", "threading", "as_module"}:
            setattr(module, name, value)
    module.__dict__["Any"] = Any
    return module
