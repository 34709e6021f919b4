"""The AudioSocket transport through a running voicegate: an Asterisk-shaped peer (stream_peers) streams recorded
speech as slin 8 and 16 kHz to the echo, demo and long agents; bad frames end only their own call."""

from __future__ import annotations

import asyncio
import socket
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from telephony.records import read_records
from telephony.simulator.measure import caller_onset_frame, echo_lag, frames_db
from tests.integration.peers import Gateway, free_port, gateway_config, start_gateway
from tests.integration.stream_peers import audiosocket_call, frame
from tests.integration.test_media_stream import prompt, speech_s

pytestmark = pytest.mark.timeout(120)
ECHO, DEMO, LONG = (str(uuid.UUID(int=n)) for n in (1, 2, 3))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port, as_port = free_port(), free_port()
    transports = {"audiosocket": {"port": as_port, "agent": "echo", "uuids": {DEMO: "demo", LONG: "long"},
                                  "allow": ["127.0.0.1/32"]}}
    g = start_gateway(gateway_config(port, transports=transports), tmp_path_factory.mktemp("gw-as"), port)
    g.as_port = as_port  # type: ignore[attr-defined]
    yield g
    assert g.stop() == 0


def port(gw: Gateway) -> int:
    return int(gw.as_port)  # type: ignore[attr-defined]


def records(gw: Gateway) -> dict[str, dict[str, Any]]:
    return {r["call"]: r for r in read_records(gw.config.parent / "records" / "calls.db")[0]}


@pytest.mark.parametrize("kind", [0x10, 0x12])
def test_echo_returns_the_callers_audio(gw: Gateway, kind: int) -> None:
    call_id = str(uuid.uuid4())  # not in uuids: the default agent (echo)
    res = asyncio.run(audiosocket_call(port(gw), prompt("vm-goodbye"), 4.0, call_id, kind=kind, speak_at_s=0.5))
    lag_ms, peak = echo_lag(res.sent, res.heard)
    print(f"audiosocket {kind:#04x} echo: lag {lag_ms:.0f} ms, correlation {peak:.2f}")
    assert peak > 0.5 and lag_ms < 200, (lag_ms, peak)
    end = gw.wait_event("call_end", 10, call=call_id)
    assert end["reason"] == "hangup" and end["agent"] == "echo" and end["transport"] == "audiosocket"
    assert end["codec"] == f"L16/{8000 if kind == 0x10 else 16000}" and end["frames_in"] >= 190, end
    assert records(gw)[call_id]["called"] == call_id


def test_demo_greets_and_answers_a_key(gw: Gateway) -> None:
    res = asyncio.run(audiosocket_call(port(gw), np.zeros(1), 15.0, DEMO, dtmf=((8.5, "2"),)))
    assert res.first_audio_s is not None and res.first_audio_s < 1.0, res.first_audio_s
    assert speech_s(res.heard[: 8 * 16000]) > 4.0, "the greeting and menu are not speech"
    end = gw.wait_event("call_end", 10, call=DEMO, digits="2")
    said = [e["text"] for e in gw.events("agent_say") if e["call"] == end["call"]]
    assert any(t.startswith("The time here is") for t in said), said


def test_barge_in_stops_writes_at_once(gw: Gateway, clips) -> None:
    res = asyncio.run(audiosocket_call(port(gw), clips.caller, 6.0, LONG, speak_after_agent_ms=1500))
    onset = caller_onset_frame(res.sent, res.speak_start_frame)
    first_sound = caller_onset_frame(res.sent, res.speak_start_frame, -40.0)  # the quiet "s" of "Sorry"
    e = frames_db(res.heard)
    loud = np.nonzero(e > e.max() - 40)[0]
    last = loud[(loud >= first_sound) & (loud < onset + 50)]
    stop_ms = ((last[-1] if len(last) else first_sound - 1) - onset + 1) * 20.0
    print(f"audiosocket barge-in: agent audio stopped {stop_ms:.0f} ms after the caller's onset")
    assert stop_ms < 400, stop_ms  # the 100 ms, with room for a loaded machine
    end = gw.wait_event("call_end", 10, call=LONG)
    assert end["barge_ins"] == 1, end


async def _send(p: int, data: bytes, wait: float = 3.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", p)
    writer.write(data)
    await writer.drain()
    got = b""
    try:
        async with asyncio.timeout(wait):
            while chunk := await reader.read(4096):
                got += chunk
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    return got


def _uuid(n: int) -> bytes:
    return frame(0x01, uuid.UUID(int=1000 + n).bytes)


BAD = {
    "bad_length": (1, _uuid(1) + struct.pack(">BH", 0x10, 65535) + b"\x00" * 100, "expected an even"),
    "odd_audio": (2, _uuid(2) + frame(0x10, b"\x00" * 321), "expected an even"),
    "unknown_type": (3, _uuid(3) + frame(0x42, b"xy"), "unknown frame type 0x42"),
    "unsupported_rate": (4, _uuid(4) + frame(0x16, b"\x00" * 1920), "not supported"),
    "short_uuid": (None, frame(0x01, b"\x01" * 8), "a UUID is 16"),
    "audio_first": (None, frame(0x10, b"\x00" * 320), "Audio frame before the UUID"),
}


def test_bad_frames_end_only_that_call(gw: Gateway) -> None:
    good_id = str(uuid.uuid4())

    async def run() -> tuple[Any, list[bytes]]:
        good = asyncio.create_task(audiosocket_call(port(gw), prompt("vm-goodbye"), 5.0, good_id, speak_at_s=2.0))
        await asyncio.sleep(0.5)
        answers = await asyncio.gather(*(_send(port(gw), data) for _, data, _ in BAD.values()))
        # an abrupt close (RST) mid-call
        reader, writer = await asyncio.open_connection("127.0.0.1", port(gw))
        writer.write(_uuid(99) + frame(0x10, b"\x00" * 320) + b"\x10\x01")
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        return await good, answers

    good, answers = asyncio.run(run())
    lag_ms, peak = echo_lag(good.sent, good.heard)
    assert peak > 0.5, peak
    assert all(a.endswith(b"\x00\x00\x00") for a in answers), answers  # each got a hang-up frame
    errors = [e["error"] for e in gw.events("transport_error")]
    for name, (n, _, says) in BAD.items():
        assert any(says in err for err in errors), (name, errors)
        if n is not None:
            call_id = str(uuid.UUID(int=1000 + n))
            end = gw.wait_event("call_end", 10, call=call_id)
            assert end["reason"] == "protocol_error" and call_id in records(gw), end
    end = gw.wait_event("call_end", 10, call=str(uuid.UUID(int=1099)))
    assert end["reason"] == "closed" and end["sip_reason"].startswith("connection"), end
    gw.wait_event("transport_closed", 5, call=str(uuid.UUID(int=1099)))
    gw.wait_event("call_end", 10, call=good_id, reason="hangup")


def test_a_peer_error_frame_ends_the_call(gw: Gateway) -> None:
    answer = asyncio.run(_send(port(gw), _uuid(50) + frame(0xFF, b"\x02")))
    assert answer.endswith(b"\x00\x00\x00")
    end = gw.wait_event("call_end", 10, call=str(uuid.UUID(int=1050)))
    assert end["reason"] == "peer_error" and end["sip_reason"] == "error frame, code 2", end



def test_a_peer_outside_allow_is_closed_before_a_call_starts(gw: Gateway) -> None:
    """allow is 127.0.0.1/32: the same loopback listener reached from 127.0.0.2 is refused on accept."""
    before = len(gw.events("call_answered"))
    with socket.create_connection(("127.0.0.1", port(gw)), timeout=5, source_address=("127.0.0.2", 0)) as s:
        s.sendall(_uuid(9) + frame(0x10, b"\x00" * 320))
        try:
            got = s.recv(4096)
        except ConnectionResetError:  # closed with our frames unread
            got = b""
        assert got == b"", got  # closed by the gateway, nothing written
    refused = gw.wait_event("transport_refused", 10, transport="audiosocket")
    assert refused["peer"].startswith("127.0.0.2:") and "allow" in refused["reason"], refused
    assert len(gw.events("call_answered")) == before
