"""Gemini Live agents on real SIP calls through voicegate, each against its own local protocol server: audio both
ways, a tool call that transfers the call, a goAway that resumes the session, and a dropped server."""

from __future__ import annotations

import concurrent.futures
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from media.vad import Vad
from telephony.simulator.measure import caller_onset_frame, frames_db, last_agent_frame, talking_before
from tests import audio
from tests.integration.peers import Gateway, call, free_port, gateway_config, start_gateway
from tests.servers.gemini_live import AFTER_TOOL, GeminiLiveServer, Reply

KEY_ENV = "VG_TEST_GEMINI_KEY"
KEY = "test-key-123"
SCENARIOS = ("audio", "tool", "goaway", "drop")
OPENING = "Hello, and welcome. Let me tell you about our opening hours today."
LONG = ("Thank you for calling the harbour hotel. Every room has a view of the water, breakfast is served on the "
        "terrace from seven, and the restaurant opens at noon with fresh fish every day.")


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, GeminiLiveServer]]:
    with (GeminiLiveServer(KEY) as a, GeminiLiveServer(KEY) as b, GeminiLiveServer(KEY) as c,
          GeminiLiveServer(KEY) as d):
        yield dict(zip(SCENARIOS, (a, b, c, d), strict=True))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, servers: dict[str, GeminiLiveServer]) -> Iterator[Gateway]:
    port = free_port()
    os.environ[KEY_ENV] = KEY
    base = {"type": "gemini_live", "api_key_env": KEY_ENV, "model": "models/test-live", "greeting": "Greet the caller.",
            "transfer_target": "sip:operator@example.com"}
    agents = {f"gemini-{n}": {**base, "url": s.url} for n, s in servers.items()}
    # the model names sip:sales@example.com itself: the route allows it (the transfer guard)
    routes = [{"match": name, "agent": name, "transfer_allowed": ["sip:sales@example.com", "sip:operator@example.com"]}
              for name in agents]
    g = start_gateway(gateway_config(port, agents=agents, routes=routes), tmp_path_factory.mktemp("gw-gemini"), port)
    yield g
    assert g.stop() == 0


def speech_s(wav: Path, start_s: float, end_s: float) -> float:
    """Seconds of speech (VAD) the caller heard between these times."""
    rx = audio.read_wav(wav)[int(start_s * 16000) : int(end_s * 16000)]
    vad = Vad(2)
    return sum(vad.is_speech(audio.to_pcm(rx[i : i + 320])) for i in range(0, len(rx) - 319, 320)) * 0.02


def call_record(gw: Gateway, called: str) -> dict[str, Any]:
    [incoming] = [e for e in gw.events("call_incoming") if e["called"] == called]
    return gw.wait_event("call_end", 15, call=incoming["call"])


@pytest.mark.timeout(120)
def test_gemini_live_calls(gw: Gateway, servers: dict[str, GeminiLiveServer], tmp_path: Path) -> None:
    question = audio.scale_to_db(audio.trim(audio.piper("Could you help me with my booking, please?")), -20.0)
    q_s = len(question) / 16000
    wav = audio.write_wav(tmp_path / "question.wav", question)
    servers["audio"].script(Reply("Hello, how can I help?"), Reply("Sure, I can help with your booking."))
    servers["tool"].script(Reply("Let me put you through to sales.", misbehave="tool_call",
                                 tools=(("transfer_call", {"target": "sip:sales@example.com"}),)))
    servers["goaway"].script(Reply("Hello.", misbehave="go_away", time_left_s=1.0), Reply("Yes, I am still here."))
    servers["drop"].script(Reply(OPENING, misbehave="drop", down_s=1.2),
                           Reply("As I was saying, we are open until six."))
    plan = {
        "audio": ["--play", str(wav), "--speak-at-s", "3.0", "--duration", "9"],
        "tool": ["--duration", "7"],
        "goaway": ["--play", str(wav), "--speak-at-s", "3.0", "--duration", "9"],
        "drop": ["--duration", "9"],
    }

    def run(name: str) -> dict[str, Any]:
        rx = tmp_path / f"{name}.wav"
        res = call(f"sip:gemini-{name}@127.0.0.1:{gw.port}", *plan[name], "--record", str(rx), timeout=60)
        res["rx"] = rx
        return res

    with concurrent.futures.ThreadPoolExecutor(len(SCENARIOS)) as pool:
        results = dict(zip(SCENARIOS, pool.map(run, SCENARIOS), strict=True))
    for name, s in servers.items():
        assert s.violations == [], (name, s.violations)
    numbers: dict[str, Any] = {}

    # audio both ways: the greeting, the caller's question reaches the model, the answer is heard
    res, [s] = results["audio"], servers["audio"].sessions
    assert res["status"] == 200 and not res["remote_hangup"]
    assert s.turns == 1 and s.audio_in_ms > 7000 and s.replies[-1] == "Sure, I can help with your booking."
    assert speech_s(res["rx"], 0, 3.0) > 0.8, "greeting not heard"
    assert speech_s(res["rx"], 3.0 + q_s, 9.0) > 1.0, "answer not heard"
    turn = call_record(gw, "gemini-audio")["turns"][-1]
    assert turn["trigger"] == "speech" and turn["first_audio_ms"] < 1200, turn
    numbers["turn"] = {k: turn[k] for k in ("first_audio_rx_ms", "first_audio_ms", "overhead_ms", "uplink_lag_ms")}

    # a tool call transfers the call; the refusal goes back to the model, which says so
    res, [s] = results["tool"], servers["tool"].sessions
    assert res["refer_to"] == ["sip:sales@example.com"], res
    [resp] = s.tool_responses
    assert resp["name"] == "transfer_call" and "603" in resp["response"]["error"]
    assert s.replies[-1] == AFTER_TOOL["error"]
    assert speech_s(res["rx"], 0, 7.0) > 2.0

    # goAway: the agent reconnects with the latest handle and the call goes on
    res, (first, second) = results["goaway"], servers["goaway"].sessions
    assert second.resumed_from == first.handles[-1] and second.replies == ["Yes, I am still here."]
    assert speech_s(res["rx"], 3.0 + q_s, 9.0) > 0.6, "no answer after the reconnect"
    assert not res["remote_hangup"]

    # dropped mid-answer, server down: an apology within a second, then the resumed session continues the answer
    res, (first, second) = results["drop"], servers["drop"].sessions
    end = call_record(gw, "gemini-drop")
    [drop] = servers["drop"].when("drop")
    [apology] = [e for e in gw.events("agent_say") if e["call"] == end["call"]]
    assert apology["ts"] - drop < 1.0, f"apology {apology['ts'] - drop:.2f} s after the drop"
    assert servers["drop"].refused >= 1 and second.resumed_from == first.handles[-1]
    assert second.replies == ["As I was saying, we are open until six."]
    assert not res["remote_hangup"] and speech_s(res["rx"], 5.0, 9.0) > 1.0
    numbers["apology_after_drop_ms"] = round((apology["ts"] - drop) * 1000)
    reconnects = [e for e in gw.events("gemini_connected") if e["call"] == end["call"]]
    numbers["drop_outage_ms"] = reconnects[-1]["ready_ms"]
    print(json.dumps(numbers))


@pytest.mark.timeout(90)
def test_a_caller_talking_over_a_long_reply_stops_it_and_the_server_sees_the_interruption(
        gw: Gateway, servers: dict[str, GeminiLiveServer], tmp_path: Path) -> None:
    server = servers["audio"]
    server.script(Reply(LONG))
    clip = audio.scale_to_db(audio.telephone_band(audio.trim(audio.espeak(audio.CALLER_SENTENCE))), -20.0)
    wav = audio.write_wav(tmp_path / "say.wav", clip)
    before = len(server.sessions)
    res = call(f"sip:gemini-audio@127.0.0.1:{gw.port}", "--play", str(wav), "--speak-at-s", "4.0", "--duration", "9",
               "--record", str(tmp_path / "rx.wav"), "--record-sent", str(tmp_path / "tx.wav"), timeout=40)
    assert res["status"] == 200 and not res["remote_hangup"], res
    [incoming] = [e for e in gw.events("call_incoming") if e["called"] == "gemini-audio"][-1:]
    end = gw.wait_event("call_end", 15, call=incoming["call"])
    assert server.violations == []
    [s] = server.sessions[before:]
    # the server saw the caller's activityStart over its reply, cancelled it and said `interrupted`
    assert s.interrupted == 1 and s.replies[0] == LONG, s
    [cut] = [t for t in server.when("interrupted") if t > incoming["ts"]]
    barge = gw.wait_event("barge_in", 1, call=incoming["call"])
    assert 0 <= cut - barge["ts"] < 0.5, (cut, barge)
    # the caller stopped hearing the reply soon after starting to talk
    rx, tx = audio.read_wav(tmp_path / "rx.wav"), audio.read_wav(tmp_path / "tx.wav")
    onset = caller_onset_frame(tx, res["speak_start_frame"])
    # within the second before the onset: the reply pauses up to 280 ms between sentences (a CI run's onset fell in one)
    assert talking_before(frames_db(rx), onset, frames=50), "the caller did not talk over the reply"
    heard_after_ms = (last_agent_frame(rx, onset) - onset + 1) * 20
    assert heard_after_ms < 600, heard_after_ms  # the playout pauses on the caller's onset, flushed on confirm
    [turn] = [t for t in end["turns"] if t["trigger"] == "greeting"]
    assert turn["interrupted_by"] == "gateway" and turn["audio_ms"] < 9000, turn
    print(json.dumps({"heard_after_onset_ms": heard_after_ms, "server_cut_after_barge_in_ms": round(
        (cut - barge["ts"]) * 1000), "turn": turn}))
