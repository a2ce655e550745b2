from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import Server  # noqa: E402


@pytest.fixture(scope="session")
def module_server() -> Iterator[Server]:
    s = Server(module=True)
    try:
        s.start()
        yield s
    finally:
        s.cleanup()


@pytest.fixture(scope="session")
def plain_server() -> Iterator[Server]:
    s = Server(module=False)
    try:
        s.start()
        yield s
    finally:
        s.cleanup()


@pytest.fixture(params=["module", "fallback"])
def server(request: pytest.FixtureRequest) -> Server:
    """The functional tests run against both a module server and a plain redis-server."""
    name = "module_server" if request.param == "module" else "plain_server"
    return request.getfixturevalue(name)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"
