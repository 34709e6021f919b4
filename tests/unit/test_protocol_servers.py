"""The local protocol servers' schema checks against bad client input: every S2S test asserts `violations == []`,
which only means something if a malformed event is caught and named."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from agents.gemini_live import GeminiLiveAgent, GeminiLiveConfig, GeminiLiveFactory
from agents.openai_realtime import OpenAIRealtimeConfig, session_update
from agents.speech.tts import PromptCache
from tests.servers.gemini_live import GeminiLiveServer
from tests.servers.openai_realtime import InvalidEventError, RealtimeServer, check_event

GOOD_SESSION = session_update(OpenAIRealtimeConfig(type="openai_realtime"))["session"]


def _session(**audio_in: Any) -> dict[str, Any]:
    s = json.loads(json.dumps(GOOD_SESSION))
    s["audio"]["input"].update(audio_in)
    return {"type": "session.update", "session": s}


BAD_REALTIME: list[tuple[dict[str, Any], str]] = [
    ({"type": "input_audio_buffer.add", "audio": ""}, "unknown client event type 'input_audio_buffer.add'"),
    ({"type": "response.cancel", "responseId": "resp_1"}, "response.cancel: unknown fields ['responseId']"),
    ({"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0},
     "conversation.item.truncate: missing ['audio_end_ms']"),
    ({"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": "1200"},
     "audio_end_ms an int >= 0"),
    ({"type": "input_audio_buffer.append"}, "input_audio_buffer.append: missing ['audio']"),
    ({"type": "input_audio_buffer.append", "audio": "not base64!"}, "input_audio_buffer.append: audio is not base64"),
    (_session(format={"type": "audio/g711_ulaw"}), "audio.input.format must be one of"),
    (_session(format={"type": "audio/pcm", "rate": 16000}), "only audio/pcm takes a rate, and only 24000"),
    (_session(format={"type": "audio/pcmu", "rate": 8000}), "only audio/pcm takes a rate"),
    (_session(turn_detection={"type": "vad"}), "turn_detection.type must be server_vad or semantic_vad"),
    ({"type": "session.update", "session": {**GOOD_SESSION, "input_audio_format": "pcm16"}},
     "unknown session fields ['input_audio_format'] (beta names?)"),
    ({"type": "session.update", "session": {k: v for k, v in GOOD_SESSION.items() if k != "type"}},
     "session.type must be 'realtime', got None"),
    ({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "call_1"}},
     "a function_call_output needs call_id and output strings"),
]


@pytest.mark.parametrize(("event", "message"), BAD_REALTIME, ids=[m[:40] for _, m in BAD_REALTIME])
def test_realtime_check_event_names_what_is_wrong(event: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEventError) as e:
        check_event(event)
    assert message in str(e.value), str(e.value)


def test_realtime_check_event_takes_what_the_agent_sends() -> None:
    for fmt in ("pcmu", "pcm24"):
        check_event(session_update(OpenAIRealtimeConfig(type="openai_realtime", audio_format=fmt)))
    check_event({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0" * 320).decode()})
    check_event({"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 0})
    check_event({"type": "response.cancel", "response_id": "resp_1", "event_id": "vg_1"})


def test_the_realtime_server_records_a_bad_event_and_answers_with_an_error(rt: RealtimeServer) -> None:
    with connect(rt.url, additional_headers={"Authorization": "Bearer sk-test"}) as ws:
        assert json.loads(ws.recv(5))["type"] == "session.created"
        ws.send(json.dumps({"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0,
                            "event_id": "ev_7"}))
        err = json.loads(ws.recv(5))
        ws.send("{not json")
        err2 = json.loads(ws.recv(5))
    assert err["type"] == "error" and err["error"]["event_id"] == "ev_7"
    assert "missing ['audio_end_ms']" in err["error"]["message"] and err2["type"] == "error"
    assert rt.violations == ["conversation.item.truncate: missing ['audio_end_ms']",
                             "client sent a message that is not a JSON object: '{not json'"]


@pytest.fixture(scope="module")
def gemini() -> Iterator[GeminiLiveServer]:
    with GeminiLiveServer() as s:
        yield s


def _until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    return check()


def _good_setup() -> dict[str, Any]:
    cfg = GeminiLiveConfig(type="gemini_live", url="ws://127.0.0.1:1/x", api_key_env=None, model="models/test-live")
    return GeminiLiveAgent(GeminiLiveFactory("g", cfg, PromptCache()))._setup()


@contextlib.contextmanager
def _open(server: GeminiLiveServer, setup: dict[str, Any]) -> Iterator[ClientConnection]:
    """A connection to `server`, set up with `setup`."""
    with connect(server.url) as ws:
        ws.send(json.dumps(setup))
        assert "setupComplete" in json.loads(ws.recv(5))
        yield ws


def test_the_gemini_server_takes_the_agents_setup_and_audio(gemini: GeminiLiveServer) -> None:
    before = len(gemini.violations)
    with _open(gemini, _good_setup()) as ws:
        ws.send(json.dumps({"realtimeInput": {"audio": {"data": base64.b64encode(b"\0" * 640).decode(),
                                                        "mimeType": "audio/pcm;rate=16000"}}}))
        ws.send(json.dumps({"realtimeInput": {"activityStart": {}}}))
    assert _until(lambda: gemini.sessions[-1].audio_in_ms == 20, 5)
    assert gemini.violations[before:] == []


def test_the_gemini_server_records_a_bad_setup_with_each_fault(gemini: GeminiLiveServer) -> None:
    setup = _good_setup()
    s = setup["setup"]
    s["model"] = "gemini-live"
    s["generationConfig"]["responseModalities"] = ["TEXT"]
    s["realtimeInputConfig"]["turnCoverage"] = "ALL"
    s["speech_config"] = {}
    before = len(gemini.violations)
    with _open(gemini, setup):
        pass
    got = gemini.violations[before:]
    assert sorted(got) == sorted([
        "setup: unknown field 'speech_config'", "setup: model must be 'models/...', got 'gemini-live'",
        "setup: responseModalities ['TEXT'], expected ['AUDIO']", "setup: turnCoverage 'ALL'"]), got


BAD_GEMINI: list[tuple[dict[str, Any] | str, str]] = [
    ({"realtimeInput": {"audio": {"data": base64.b64encode(b"\0" * 320).decode(), "mimeType": "audio/pcm"}}},
     "realtimeInput.audio: mimeType 'audio/pcm', expected 'audio/pcm;rate=16000'"),
    ({"realtimeInput": {"audio": {"data": "%%%", "mimeType": "audio/pcm;rate=16000"}}},
     "realtimeInput.audio: data is not base64"),
    ({"realtimeInput": {"audio": {"data": base64.b64encode(b"\0" * 3).decode(), "mimeType": "audio/pcm;rate=16000"}}},
     "realtimeInput.audio: odd byte count 3"),
    ({"realtimeInput": {"audio": {"bytes": "", "mimeType": "audio/pcm;rate=16000"}}},
     "realtimeInput.audio: must be a Blob {data, mimeType}"),
    ({"realtime_input": {"activityStart": {}}}, "message: must have exactly one of"),
    ({"realtimeInput": {"activityStart": {}, "activityEnd": {}}}, "realtimeInput: must have exactly one of"),
    ({"clientContent": {"turns": {"role": "user", "parts": [{"text": "hi"}]}}}, "clientContent: turns must be a list"),
    ({"clientContent": {"turns": [{"role": "assistant", "parts": [{"text": "hi"}]}]}}, "clientContent: bad turn"),
    ({"toolResponse": {"functionResponses": []}}, "toolResponse: functionResponses must be a non-empty list"),
    ({"toolResponse": {"functionResponses": [{"id": "f1", "name": "end_call", "response": {}}]}},
     "toolResponse: no pending call with id 'f1'"),
    ("{not json", "message: not JSON"),
]


def test_the_gemini_server_records_each_bad_message_with_a_useful_message(gemini: GeminiLiveServer) -> None:
    before = len(gemini.violations)
    with _open(gemini, _good_setup()) as ws:
        for msg, _ in BAD_GEMINI:
            ws.send(msg if isinstance(msg, str) else json.dumps(msg))
        ws.send(json.dumps({"setup": _good_setup()["setup"]}))
        assert _until(lambda: len(gemini.violations) - before >= len(BAD_GEMINI) + 1, 5)
    got = gemini.violations[before:]
    for (_, want), violation in zip(BAD_GEMINI, got, strict=False):
        assert violation.startswith(want), (want, violation)
    assert got[len(BAD_GEMINI)] == "setup: sent twice" and len(got) == len(BAD_GEMINI) + 1, got
