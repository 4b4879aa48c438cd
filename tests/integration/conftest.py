"""A real tritonserver on free ports, serving the repository's model on the tiny pipeline."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded.triton_server import DEFAULT_MODEL_REPOSITORY, EmbeddedTriton

from .helpers import Caller, free_port


def start_triton(model_repository: Path, model_path: Path) -> EmbeddedTriton:
    return EmbeddedTriton(
        model_repository=model_repository,
        model_path=model_path,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        ready_timeout_s=240,
    ).start()


@pytest.fixture(scope="session")
def triton(tiny_model_path: Path) -> Iterator[EmbeddedTriton]:
    server = start_triton(DEFAULT_MODEL_REPOSITORY, tiny_model_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def caller(triton: EmbeddedTriton) -> Caller:
    return Caller(triton.http_url)


def copy_repository(destination: Path, replacements: dict[str, str]) -> Path:
    """The shipped model repository with some config.pbtxt lines changed (tests of other settings)."""
    repository = destination / "model_repository"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repository, ignore=shutil.ignore_patterns("__pycache__"))
    config = repository / "sd_img2img" / "config.pbtxt"
    text = config.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    return repository
