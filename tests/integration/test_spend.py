"""Spend caps on real calls: a speech-to-speech call over its cap is wrapped up, or moved to the cascade."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import audio
from tests.integration.peers import Gateway, call, free_port, gateway_config, start_gateway
from tests.servers.openai_realtime import RealtimeServer, speak

KEY_ENV = "VG_TEST_REALTIME_KEY"
WRAP_UP = "Sorry, this call has reached its limit. Goodbye."
GREETING = "Hello, this is the harbour hotel. How can I help you today?"


@pytest.fixture(scope="module")
def rt() -> Iterator[RealtimeServer]:
    with RealtimeServer() as server:
        yield server


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, rt: RealtimeServer) -> Iterator[Gateway]:
    os.environ[KEY_ENV] = "sk-test"
    port = free_port()
    cfg = yaml.safe_load(gateway_config(port))
    rt_agent = {"type": "openai_realtime", "url": rt.url, "api_key_env": KEY_ENV, "audio_format": "pcmu",
                "turn_owner": "gateway"}
    cfg["agents"].update({"rt_end": rt_agent, "rt_move": rt_agent, "rt_day": rt_agent})
    cfg["routes"] = [{"match": "cap-end", "agent": "rt_end"}, {"match": "cap-move", "agent": "rt_move"},
                     {"match": "cap-day", "agent": "rt_day"}]
    # caller audio reaches the S2S server all call long: $1 a minute of it is 1/60 of a dollar a second
    cfg["prices"] = {"s2s": {"openai_realtime": {"in_per_min": 1.0}}}
    cfg["spend"] = {
        "rt_end": {"per_call": 0.05, "wrap_up": WRAP_UP},  # about 3 s
        "rt_move": {"per_call": 0.05, "on_cap": "cascade", "cascade": "assistant"},
        "rt_day": {"per_day": 0.12, "wrap_up": WRAP_UP},  # about 7 s over all calls of the day
    }
    g = start_gateway(yaml.safe_dump(cfg), tmp_path_factory.mktemp("gw-spend"), port)
    yield g
    assert g.stop() == 0


def uri(gw: Gateway, user: str) -> str:
    return f"sip:{user}@127.0.0.1:{gw.port}"


def last_end(gw: Gateway, called: str) -> dict[str, Any]:
    calls = [e["call"] for e in gw.events("call_incoming") if e["called"] == called]
    return gw.wait_event("call_end", 15, call=calls[-1])


def test_a_call_over_its_cap_hears_the_wrap_up_and_is_ended(gw: Gateway, rt: RealtimeServer, tmp_path: Path) -> None:
    rt.reset()
    rt.script(speak(GREETING))
    res = call(uri(gw, "cap-end"), "--duration", "20", "--record", str(tmp_path / "rx.wav"), timeout=40)
    end = last_end(gw, "cap-end")
    assert res["remote_hangup"] and end["reason"] == "spend_cap", end
    cap = gw.wait_event("spend_cap", 1, call=end["call"])
    assert cap["scope"] == "call" and cap["action"] == "end" and cap["spent"] >= 0.05
    assert 3.0 <= end["duration_s"] < 12.0, end  # the cap at about 3 s, then the wrap-up line
    rx = audio.read_wav(tmp_path / "rx.wav")
    assert len(rx) / 16000 >= 4.0  # the wrap-up was played before the hang-up


def test_on_cap_cascade_moves_the_call_to_the_cascaded_agent(gw: Gateway, rt: RealtimeServer,
                                                             tmp_path: Path) -> None:
    rt.reset()
    rt.script(speak(GREETING))
    question = audio.piper("When are you open?")
    wav = audio.write_wav(tmp_path / "ask.wav", question)
    call(uri(gw, "cap-move"), "--play", str(wav), "--speak-at-s", "9.0", "--duration", "16", timeout=40)
    end = last_end(gw, "cap-move")
    assert end["reason"] != "spend_cap", end  # the call went on
    cap = gw.wait_event("spend_cap", 1, call=end["call"])
    assert cap["action"] == "cascade"
    cascade = [t for t in end["turns"] if t.get("backend") == "cascaded"]
    assert cascade and "open" in cascade[-1]["text"].lower(), end["turns"]
    assert cascade[-1]["reply"].startswith("Reception is open"), cascade[-1]


def test_the_day_cap_counts_every_call_of_the_agent(gw: Gateway, rt: RealtimeServer) -> None:
    rt.reset()
    first = call(uri(gw, "cap-day"), "--duration", "4", timeout=30)
    assert not first["remote_hangup"]
    end1 = last_end(gw, "cap-day")
    assert end1["reason"] != "spend_cap"
    second = call(uri(gw, "cap-day"), "--duration", "20", timeout=40)  # the day has about 3 s left
    end2 = last_end(gw, "cap-day")
    assert second["remote_hangup"] and end2["reason"] == "spend_cap", end2
    cap = gw.wait_event("spend_cap", 1, call=end2["call"])
    assert cap["scope"] == "day" and cap["spent"] >= 0.12
    assert end2["duration_s"] < 12.0
