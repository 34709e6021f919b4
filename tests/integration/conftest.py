from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.peers import Gateway, free_port, gateway_config, start_gateway


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gw")
    port = free_port()
    gw = start_gateway(gateway_config(port), tmp, port)
    yield gw
    rc = gw.stop()
    tail = "\n".join(gw.lines[-20:])
    assert rc == 0, f"voicegate exited with {rc} on SIGTERM\n{tail}"
    gw.wait_event("gateway_stopped", 1)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
