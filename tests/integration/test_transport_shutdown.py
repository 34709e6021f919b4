"""SIGTERM with stream-transport calls in progress: they get the shutdown grace, are hung up, and are recorded."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from telephony.records import read_records
from tests.integration.peers import free_port, gateway_config, start_gateway
from tests.integration.stream_peers import audiosocket_call, twilio_call

pytestmark = pytest.mark.timeout(120)


def test_sigterm_hangs_up_and_records_transport_calls(tmp_path: Path) -> None:
    port, ws_port, as_port = free_port(), free_port(), free_port()
    transports = {"media_stream": {"port": ws_port, "agent": "echo"}, "audiosocket": {"port": as_port, "agent": "echo"}}
    gw = start_gateway(gateway_config(port, transports=transports), tmp_path, port)
    as_id = str(uuid.uuid4())

    async def calls() -> tuple[float, float, float]:
        ws = asyncio.create_task(twilio_call(f"ws://127.0.0.1:{ws_port}/media", np.zeros(1), 20.0, to="echo"))
        au = asyncio.create_task(audiosocket_call(as_port, np.zeros(1), 20.0, as_id))
        while len(gw.events("call_answered")) < 2:
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        stopped = asyncio.create_task(asyncio.to_thread(gw.stop))
        w, a = await ws, await au
        assert await stopped == 0
        assert w.hung_up_s is not None and a.hung_up_s is not None
        return time.monotonic() - t0, w.hung_up_s, a.hung_up_s

    took, _, _ = asyncio.run(calls())
    assert took < 10, f"shutdown took {took:.1f} s (grace 2 s)"
    recs, _ = read_records(tmp_path / "records" / "calls.db")
    assert sorted(r["transport"] for r in recs) == ["audiosocket", "media_stream"], recs
    assert all(r["reason"] == "shutdown" for r in recs), [r["reason"] for r in recs]
    assert any(r["call"] == as_id for r in recs)
