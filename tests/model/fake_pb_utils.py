"""A stand-in for ``triton_python_backend_utils`` with just what ``model.py`` uses."""

from __future__ import annotations

import types
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


@dataclass
class InferenceRequest:
    inputs: dict[str, np.ndarray]
    cancelled: bool = False

    def is_cancelled(self) -> bool:
        return self.cancelled


@dataclass
class InferenceResponse:
    output_tensors: list[Tensor] = field(default_factory=list)
    error: TritonError | None = None

    def output(self, name: str) -> np.ndarray:
        return next(t.array for t in self.output_tensors if t.name == name)


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
        if not name.startswith("_") and name not in {"annotations", "types", "as_module"}:
            setattr(module, name, value)
    module.__dict__["Any"] = Any
    return module
