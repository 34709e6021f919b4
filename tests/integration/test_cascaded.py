"""The embedded assistant (rule-based dialog) on real SIP calls to the shared test gateway: recorded requests,
hang-up, spelled codes by voice and keypad, and backchannels told by their words."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import audio
from tests.integration.cascaded_calls import turns_of, uri
from tests.integration.peers import VENV_BIN, Gateway, call, rtp_range
from tests.prompts import SOUNDS

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_a_recorded_request_for_an_operator_is_transferred(gateway: Gateway, tmp_path: Path) -> None:
    res = call(uri(gateway, "assistant"), "--play", str(SOUNDS / "vm-reachoper.wav"), "--speak-at-s", "4.0",
               "--duration", "15", timeout=40)
    assert res["refer_to"] == ["sip:reception@pbx.example.com"], res
    [turn] = turns_of(gateway, "assistant", last=True)
    assert "operator" in turn["text"].lower()
    assert turn["reply"] == "Putting you through to reception."
    assert turn["asr_final_ms"] < 1500 and turn["first_audio_ms"] < 3000, turn  # generous: timings are the bench's
    assert turn["commit_wait_ms"] == 240 and turn["play_ms"] >= 240 - 1, turn  # a complete sentence: at the endpoint


def test_goodbye_ends_the_call_from_the_agent_side(gateway: Gateway, tmp_path: Path) -> None:
    res = call(uri(gateway, "assistant"), "--play", str(SOUNDS / "goodbye.wav"), "--speak-at-s", "4.0",
               "--duration", "15", timeout=40)
    assert res["remote_hangup"] and res["duration_s"] < 12, res


@pytest.mark.parametrize("script", ["assistant-booking.yaml", "assistant-booking-keypad.yaml"])
def test_a_spelled_booking_code_is_read_back_and_confirmed_exactly(gateway: Gateway, tmp_path: Path,
                                                                    script: str) -> None:
    lo, _ = rtp_range(100)
    r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(SCRIPTS / script), "--target",
                        uri(gateway, "assistant"), "--rtp-port", str(lo)], capture_output=True, text=True,
                       timeout=120)
    turns = turns_of(gateway, "assistant", last=True)
    heard = [(t.get("text"), t.get("reply")) for t in turns]
    assert r.returncode == 0, f"{r.stdout[-3000:]}{r.stderr[-1500:]}\ngateway heard and replied: {heard}"
    replies = [t["reply"] for t in turns]
    if "keypad" in script:
        assert "K, L. Go on." in replies, replies
    assert any("Booking K, L. four, seven, two, nine is confirmed" in x for x in replies), replies


def test_backchannels_longer_than_confirm_ms_resume_the_greeting_by_their_words(gateway: Gateway,
                                                                                 tmp_path: Path) -> None:
    """"Okay, okay, okay" in one breath (1.2 s) over the greeting outlasts `barge_in.confirm_ms` (600 ms), which
    alone would cut the greeting; its first words resume it where it paused, and the rest of it, over the greeting,
    cuts nothing. (Words moonshine hears through G.711 at every length: "sure" came back as "so" or "hope", and
    those words confirmed the barge-in.)"""
    bc = audio.telephone_band(audio.trim(audio.espeak("okay okay okay", "en-us", 150)))
    assert len(bc) / 16000 > 0.9
    wav = audio.write_wav(tmp_path / "bc.wav", audio.scale_to_db(bc, -16.0))
    call(uri(gateway, "assistant"), "--play", str(wav), "--speak-after-agent-ms", "1000", "--duration", "6",
         timeout=30)
    c = [e["call"] for e in gateway.events("call_incoming") if e["called"] == "assistant"][-1]
    gateway.wait_event("call_end", 15, call=c)
    seen = [(e["event"], e.get("by") or e.get("verdict"), e.get("paused_ms")) for e in gateway.events()
            if e.get("call") == c and e["event"].startswith("barge_in")]
    assert [e[0] for e in seen if e[0] != "barge_in_words"] == ["barge_in_paused", "barge_in_resumed"], seen
    assert next(e for e in seen if e[0] == "barge_in_resumed")[1] == "words", seen
