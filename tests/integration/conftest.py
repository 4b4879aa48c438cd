from __future__ import annotations

import pytest

from embedded.triton_calls import Caller
from embedded.triton_server import EmbeddedTriton


@pytest.fixture(scope="session")
def caller(triton: EmbeddedTriton) -> Caller:
    return Caller(triton.http_url)
