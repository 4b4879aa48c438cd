"""The service's version: the installed package's (``pyproject.toml``), for OpenAPI and the User-Agent."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "sd-img2img-serving"


def version() -> str:
    """``0.1.0`` as installed; ``0+unknown`` when run from a tree that was never installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def user_agent() -> str:
    return f"sd-img2img/{version()}"
