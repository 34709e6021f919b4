"""The cascaded agent with outside services on real SIP calls: a local LLM server streaming chat completions
(barge-in cancels its stream, failures and hangs get an apology) and the example order service (a spelled code is
looked up)."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.order_status.server import make_server
from tests import audio
from tests.integration.cascaded_calls import sequence, start_cascaded_gateway, turns_of, uri
from tests.integration.peers import VENV_BIN, Gateway, call, rtp_range
from tests.servers.llm import LlmServer, error_reply, hang_reply, text_reply

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

LONG_REPLY = [
    "Our hotel sits right on the harbour, ", "a short walk from the old town. ",
    "Every room has a view of the water, ", "and breakfast is served on the terrace from seven. ",
    "The restaurant opens at noon and serves fresh fish every day. ",
    "We also have a small spa with a sauna and a pool. ",
    "Parking is free for guests, and the train station is ten minutes away. ",
    "If you like walking, the coastal path starts right outside our door. ",
]


@pytest.fixture(scope="module")
def llm() -> Iterator[LlmServer]:
    with LlmServer() as server:
        yield server


@pytest.fixture(scope="module")
def orders() -> Iterator[str]:
    """The example order service (examples/order_status) on a free port."""
    server = make_server(0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, llm: LlmServer, orders: str) -> Iterator[Gateway]:
    os.environ["VG_TEST_LLM_KEY"] = "sk-test"
    agent = {
        "type": "cascaded",
        "llm": {"base_url": llm.base_url, "model": "test-model", "api_key_env": "VG_TEST_LLM_KEY", "greeting": "Hi.",
                "first_token_timeout_s": 2.0, "filler_after_s": 1.0},
    }
    g = start_cascaded_gateway(tmp_path_factory, "gw-cascaded-services", {"llm": agent},
                               [{"match": "llm", "agent": "llm"}, {"match": "orderdesk", "agent": "order_desk"}],
                               {"order_status": orders + "/orders/{order_id}"})
    yield g
    assert g.stop() == 0


def test_barge_in_cancels_the_llm_stream_and_history_keeps_what_was_heard(
    gw: Gateway, llm: LlmServer, tmp_path: Path
) -> None:
    # a chunk every 0.7 s: the first text (1.4 s) within first_token_timeout_s (2 s), still writing when cut
    llm.script(text_reply(LONG_REPLY, delay_s=0.7),
               text_reply(["Sure, rooms start at ninety euros a night."]))
    first = audio.piper("Can you tell me about your hotel?")
    second = audio.piper("Sorry to stop you but how much is a room?")
    wav = audio.write_wav(tmp_path / "talk.wav", sequence([(2.5, first), (9.5, second)], 16.0))
    n0 = len(llm.requests)
    call(uri(gw, "llm"), "--play", str(wav), "--speak-at-s", "0", "--duration", "20", timeout=50)
    assert llm.wait_disconnect(1.0), turns_of(gw, "llm", last=True)
    assert len(llm.requests) >= n0 + 2
    history = llm.requests[n0 + 1].body["messages"]
    said = [m["content"] for m in history if m["role"] == "assistant"]
    assert said[-1].endswith("…"), said
    assert "coastal path" not in said[-1]  # written by the model, never played
    assert history[-1]["role"] == "user" and "room" in history[-1]["content"].lower()
    turns = turns_of(gw, "llm", last=True)
    assert turns[0]["interrupted"] and turns[1]["reply"].startswith("Sure")
    cut = turns[0]  # the model's first text, the caller's onset over the reply, the barge-in's confirmation
    assert cut["reply"].startswith("One moment. Our hotel sits right on the harbour"), cut
    assert 1400 <= cut["llm_first_token_ms"] < cut["barge_in_onset_ms"] < cut["barge_in_ms"], cut
    assert cut["play_ms"] < cut["barge_in_onset_ms"] and cut["barge_in_ms"] < cut["barge_in_onset_ms"] + 2000, cut


def test_the_callers_raised_arousal_reaches_the_llm_and_a_neutral_tone_does_not(
    gw: Gateway, llm: LlmServer, tmp_path: Path
) -> None:
    """Paralinguistics measured on the caller's audio through G.711: piper's excited question (mean pitch 157 Hz over
    an 18-semitone range: `aroused`, 0.72 offline) is described to the model; a level request (0.48) is not."""
    llm.script(text_reply(["Of course."]), text_reply(["Certainly."]))
    excited = audio.piper("Wow, can you tell me more about it?")
    level = audio.piper("I would like to book a table for two.")
    wav = audio.write_wav(tmp_path / "talk.wav", sequence([(2.5, excited), (7.0, level)], 11.0))
    n0 = len(llm.requests)
    call(uri(gw, "llm"), "--play", str(wav), "--speak-at-s", "0", "--duration", "12", timeout=40)
    asked = [r.body["messages"][-1] for r in llm.requests[n0:]]
    assert [m["role"] for m in asked] == ["user", "user"], asked
    assert "more about it" in asked[0]["content"].lower(), asked
    assert "\n[caller sounds aroused: pitch " in asked[0]["content"], asked
    assert "table for two" in asked[1]["content"].lower() and "[caller sounds" not in asked[1]["content"], asked


def test_llm_failures_get_an_apology_and_the_call_goes_on(gw: Gateway, llm: LlmServer, tmp_path: Path) -> None:
    llm.script(error_reply(500, "model overloaded"), text_reply(["We are open until eleven."]))
    first = audio.piper("What time do you close tonight?")
    second = audio.piper("And when do you open?")
    wav = audio.write_wav(tmp_path / "talk.wav", sequence([(2.5, first), (8.0, second)], 13.0))
    call(uri(gw, "llm"), "--play", str(wav), "--speak-at-s", "0", "--duration", "14", timeout=40)
    turns = turns_of(gw, "llm", last=True)
    assert turns[0]["reply"].startswith("Sorry, I am having trouble"), turns
    assert turns[1]["reply"] == "We are open until eleven.", turns
    assert turns[0]["llm_first_token_ms"] is None, turns  # the 500 carried no token
    assert turns[1]["brain_start_ms"] < turns[1]["llm_first_token_ms"] <= turns[1]["first_audio_ms"], turns


def test_an_llm_that_never_answers_gets_the_filler_then_the_apology_and_the_call_goes_on(
    gw: Gateway, llm: LlmServer, tmp_path: Path
) -> None:
    llm.script(hang_reply("after_headers"), text_reply(["We are open until eleven."]))
    first = audio.piper("What time do you close tonight?")
    second = audio.piper("And when do you open?")
    wav = audio.write_wav(tmp_path / "talk.wav", sequence([(2.5, first), (8.5, second)], 13.0))
    n0 = len(llm.requests)
    res = call(uri(gw, "llm"), "--play", str(wav), "--speak-at-s", "0", "--duration", "14", timeout=40)
    assert res["status"] == 200 and not res["remote_hangup"], res
    turns = turns_of(gw, "llm", last=True)
    # the filler after filler_after_s (1 s), the apology at first_token_timeout_s (2 s); the next turn is answered
    assert turns[0]["reply"] == "One moment. Sorry, I am having trouble understanding right now. Please try again.", \
        turns
    assert turns[0]["heard"].startswith("One moment. Sorry, I am having trouble"), turns  # (a slow machine may
    assert turns[1]["reply"] == "We are open until eleven.", turns                      # cut its end by turn two)
    assert len(llm.requests) == n0 + 2


def test_an_order_code_spelled_by_voice_is_looked_up_in_the_example_service(gw: Gateway) -> None:
    lo, _ = rtp_range(100)
    r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(SCRIPTS / "order-desk.yaml"), "--target",
                        uri(gw, "orderdesk"), "--rtp-port", str(lo)], capture_output=True, text=True, timeout=120)
    turns = turns_of(gw, "orderdesk", last=True)
    heard = [(t.get("text"), t.get("reply")) for t in turns]
    assert r.returncode == 0, f"{r.stdout[-3000:]}{r.stderr[-1500:]}\ngateway heard and replied: {heard}"
    [lookup] = [t for t in turns if t.get("tool") == "order_status"]
    assert lookup["arguments"] == {"order_id": "KL4729"} and lookup["ok"], lookup
    replies = [t.get("reply", "") for t in turns]
    assert any("is out for delivery. Delivery: today." in x for x in replies), replies
