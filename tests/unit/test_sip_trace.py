"""Per-call SIP trace files from pjsip's message log, and the call id every event of a call carries."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from agents.eventlog import bind_call, emit, subscribe
from telephony.sip_trace import SipTrace, message_call_id, trace_path

INVITE = ("RX 512 bytes Request msg INVITE/cseq=1 (rdata0x1) from UDP 127.0.0.1:5070:\n"
          "INVITE sip:echo@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070\ni: a/b@host\nCSeq: 1 INVITE\n\n"
          "v=0\no=- 1 1 IN IP4 127.0.0.1\n--end msg--")


def test_messages_go_to_their_calls_file(tmp_path: Path) -> None:
    assert message_call_id(INVITE) == "a/b@host"
    trace = SipTrace(tmp_path)
    assert trace.write(INVITE)
    assert trace.write(INVITE.replace("i: a/b@host", "Call-ID: other"))
    assert not trace.write("pjsua_core.c  some state change")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_b@host.sip", "other.sip"]
    text = trace_path(tmp_path, "a/b@host").read_text()
    assert "INVITE sip:echo@127.0.0.1" in text and "--end msg--" not in text and "v=0" in text


def test_a_message_without_call_id_is_dropped(tmp_path: Path) -> None:
    assert SipTrace(tmp_path).write(INVITE.replace("i: a/b@host\n", ""))
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_events_of_a_calls_tasks_carry_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, dict[str, object]]] = []
    unsubscribe = subscribe(lambda name, fields: seen.append((name, dict(fields))))
    log = logging.getLogger("test")

    async def session(call_id: str) -> None:
        bind_call(call_id)
        await asyncio.create_task(asyncio.to_thread(emit, log, logging.INFO, "tts_error", {}))
        emit(log, logging.INFO, "named", {"call": "explicit"})

    async def main() -> None:
        await asyncio.gather(session("c1"), session("c2"))
        emit(log, logging.INFO, "outside", {})

    try:
        asyncio.run(main())
    finally:
        unsubscribe()
    assert sorted(f.get("call", "") for n, f in seen if n == "tts_error") == ["c1", "c2"]
    assert [f["call"] for n, f in seen if n == "named"] == ["explicit", "explicit"]
    assert [f for n, f in seen if n == "outside"] == [{}]
