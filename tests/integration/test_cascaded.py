"""The embedded assistant (rule-based dialog) on real SIP calls to the shared test gateway: recorded requests,
hang-up, and spelled codes by voice and keypad."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

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
