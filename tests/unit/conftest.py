"""Fixtures shared by the unit tests of the OpenAI Realtime agent and of its tools."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.openai_realtime import RealtimeServer

KEY_ENV = "VG_TEST_REALTIME_KEY"


@pytest.fixture(scope="module")
def realtime_server() -> Iterator[RealtimeServer]:
    with RealtimeServer() as s:
        yield s


@pytest.fixture
def rt(realtime_server: RealtimeServer, monkeypatch: pytest.MonkeyPatch) -> RealtimeServer:
    """The local OpenAI Realtime server, reset between tests, with its API key in `KEY_ENV`."""
    monkeypatch.setenv(KEY_ENV, "sk-test")
    realtime_server.reset()
    return realtime_server
