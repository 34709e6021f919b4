"""Compliance through a running voicegate: a recorded route's call leaves a stereo WAV (caller left, agent right) as
long as the call, silent while paused by DTMF, named in the call record, and `voicegate erase` removes it; a route's
consent announcement plays before the agent, and a caller who does not press the consent key is hung up."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from telephony.records import caller_number, read_records
from tests import audio
from tests.integration.peers import VENV_BIN, Gateway, call, free_port, gateway_config, start_gateway
from tests.integration.stream_peers import twilio_call

ANNOUNCEMENT = "This call is answered by an AI assistant. Press 1 to continue."


CARD_READBACK = "Your card number is four one one one, one one one one, one one one one, one one one one."
TOKEN = "compliance-token"
WS_PORT: dict[int, int] = {}
"""The media-stream WebSocket port of each gateway started here, by its SIP port."""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port, ws_port = free_port(), free_port()
    WS_PORT[port] = ws_port
    os.environ["VG_COMPLIANCE_TOKEN"] = TOKEN  # the gateway subprocess inherits it
    transports = {"media_stream": {"port": ws_port, "path": "/media", "agent": "echo",
                                   "token_env": "VG_COMPLIANCE_TOKEN"}}
    cfg = yaml.safe_load(gateway_config(port, transports=transports))
    cfg["routes"].insert(0, {"match": "rec", "agent": "echo",
                             "recording": {"pause_code": "*1", "resume_code": "*2"}})
    cfg["agents"]["pay"] = {"type": "scripted", "voice": "en", "start": "pay", "nodes": {
        "pay": [{"say": "Welcome to the shop."}, {"say": "Key your card number."},
                {"collect": "card", "max_digits": 4, "timeout_s": 4, "secure": True},
                {"branch": "card", "cases": {"4242": "ok"}, "default": "bad"}],
        "ok": [{"say": "Accepted."}, {"pause_s": 1}, {"hangup": "paid"}],
        "bad": [{"say": "Declined."}, {"hangup": "declined"}]}}
    cfg["routes"].insert(0, {"match": "pay", "agent": "pay", "recording": {}})
    cfg["agents"]["readback"] = {"type": "scripted", "voice": "en", "start": "a", "nodes": {"a": [
        {"say": "Let me read your card back."}, {"recording": "pause"}, {"say": CARD_READBACK},
        {"recording": "resume"}, {"say": "Is that right?"}, {"pause_s": 1}, {"hangup": "read_back"}]}}
    cfg["routes"].insert(0, {"match": "readback", "agent": "readback", "recording": {}})
    cfg["routes"].insert(0, {"match": "consent", "agent": "echo", "announcement": {
        "text": ANNOUNCEMENT, "consent_key": "1", "timeout_s": 3}})
    g = start_gateway(yaml.safe_dump(cfg), tmp_path_factory.mktemp("gw-recordings"), port)
    yield g
    g.stop()


def levels_db(x: np.ndarray, window_s: float = 0.1) -> np.ndarray:
    """RMS level per window, in dBFS."""
    n = int(window_s * 16000)
    w = x[: len(x) // n * n].astype(np.float64).reshape(-1, n) / 32768
    return 20 * np.log10(np.sqrt((w**2).mean(axis=1)) + 1e-9)


def test_a_recorded_call_is_a_stereo_wav_of_the_call_paused_by_dtmf(gw: Gateway, tmp_path: Path) -> None:
    t = np.arange(int(7 * 16000)) / 16000
    tone = audio.write_wav(tmp_path / "tone.wav", 3000 * np.sin(2 * np.pi * 440 * t))
    res = call(f"sip:rec@127.0.0.1:{gw.port}", "--play", str(tone), "--speak-at-s", "0.2", "--duration", "6",
               "--dtmf", "*1@2", "--dtmf", "*2@4")
    assert res["answered"]
    end = _end_of(gw, "rec", -1)
    path = Path(end["recording"])
    assert "announcement" not in end
    assert path.parent == gw.config.parent / "records" / "recordings"
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 16000)
        seconds = w.getnframes() / 16000
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert end["recording_s"] == round(seconds, 2)
    answered = gw.wait_event("call_answered", 1, call=end["call"])
    media_s = end["duration_s"] - answered["answer_ms"] / 1000  # the call from its answer: what has media
    assert abs(seconds - media_s) < 0.5, (seconds, end["duration_s"], answered["answer_ms"])
    assert 1.5 < end["recording_paused_s"] < 2.5, end
    caller, agent = levels_db(pcm[:, 0]), levels_db(pcm[:, 1])
    # the tone is on both channels before the pause (caller's, then its echo) and after it, and nothing in between
    # (a late frame on a busy machine is a silent 20 ms in its 100 ms window: most windows must hold the tone)
    for ch in (caller, agent):
        assert (ch[5:15] > -35).mean() >= 0.8, ch[:20].round()
        assert (ch[30:35] < -80).all(), ch[25:40].round()
        assert (ch[48:55] > -35).mean() >= 0.8, ch[40:60].round()
    [rec] = [r for r in read_records(gw.config.parent / "records/calls.db")[0] if r["call"] == end["call"]]
    assert rec["recording"] == str(path)

    proc = subprocess.run([str(VENV_BIN / "voicegate"), "erase", "--caller", caller_number(rec["caller"]), "--config",
                           str(gw.config)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert not path.exists() and not read_records(gw.config.parent / "records/calls.db")[0]
    entry = json.loads((gw.config.parent / "records/audit.jsonl").read_text().splitlines()[-1])
    assert entry["action"] == "erase" and end["call"] in entry["calls"] and entry["files_removed"] == 1


def test_the_announcement_plays_first_and_a_key_pressed_during_it_is_consent(gw: Gateway, tmp_path: Path) -> None:
    res = call(f"sip:consent@127.0.0.1:{gw.port}", "--duration", "6", "--dtmf", "1@1.5",
               "--record", str(tmp_path / "rx.wav"))
    assert res["answered"] and not res["remote_hangup"]
    end = _end_of(gw, "consent", -1)
    assert end["reason"] == "remote_200" and end["announcement"]["consent"] is True, end
    assert 2000 < end["announcement"]["played_ms"] < 6000, end["announcement"]
    said = [e for e in gw.events("agent_say") if e["call"] == end["call"]]
    assert [e["text"] for e in said] == [ANNOUNCEMENT] and said[0]["interruptible"] is False
    heard = levels_db(audio.read_wav(tmp_path / "rx.wav"))
    assert (heard[2:10] > -45).sum() >= 5, heard[:12].round()  # speech from the start: the announcement


def test_a_caller_who_does_not_consent_is_hung_up(gw: Gateway) -> None:
    res = call(f"sip:consent@127.0.0.1:{gw.port}", "--duration", "20")
    assert res["answered"] and res["remote_hangup"]
    end = _end_of(gw, "consent", -1)
    assert end["reason"] == "no_consent" and end["announcement"]["consent"] is False, end
    assert end["duration_s"] < end["announcement"]["played_ms"] / 1000 + 3 + 3, end


def test_keys_of_a_secure_collect_are_masked_in_log_record_and_recording(gw: Gateway, tmp_path: Path) -> None:
    t = np.arange(int(10 * 16000)) / 16000
    tone = audio.write_wav(tmp_path / "tone.wav", 3000 * np.sin(2 * np.pi * 440 * t))
    res = call(f"sip:pay@127.0.0.1:{gw.port}", "--play", str(tone), "--speak-at-s", "0.2", "--duration", "12",
               "--dtmf", "4242@3")
    assert res["answered"] and res["remote_hangup"]
    end = _end_of(gw, "pay", -1)
    assert end["reason"] == "paid" and end["digits"] == "xxxx", end
    keys = [e for e in gw.events("dtmf") if e["call"] == end["call"]]
    assert keys and {e["digit"] for e in keys} == {"x"}, keys
    assert "4242" not in "\n".join(line for line in gw.lines if end["call"] in line)
    with wave.open(str(end["recording"])) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    caller = levels_db(pcm[:, 0])
    assert (caller[5:10] > -35).mean() >= 0.8, caller.round()  # the caller during the welcome: recorded
    assert (caller[25:33] < -80).all(), caller.round()  # keying the card (from 3 s): silent
    assert (caller[-10:] > -35).mean() >= 0.8, caller.round()  # after the last key: recorded again


def test_a_secure_collect_over_the_media_stream_transport_is_masked_too(gw: Gateway) -> None:
    t = np.arange(int(8 * 16000)) / 16000
    keys = tuple((3.0 + 0.2 * i, d) for i, d in enumerate("4242"))
    asyncio.run(twilio_call(f"ws://127.0.0.1:{WS_PORT[gw.port]}/media", 3000 * np.sin(2 * np.pi * 440 * t), 9.0,
                            to="pay", dtmf=keys, headers={"Authorization": f"Bearer {TOKEN}"}))
    end = gw.wait_event("call_end", 10, agent="pay", transport="media_stream")
    assert end["transport"] == "media_stream" and end["digits"] == "xxxx" and end["reason"] == "paid", end
    keys_logged = [e for e in gw.events("dtmf") if e["call"] == end["call"]]
    assert [e["digit"] for e in keys_logged] == ["x"] * 4, keys_logged
    assert "4242" not in "\n".join(line for line in gw.lines if end["call"] in line)


def test_the_agent_pauses_the_recording_while_it_reads_a_card_number_back(gw: Gateway, tmp_path: Path) -> None:
    t = np.arange(int(14 * 16000)) / 16000
    tone = audio.write_wav(tmp_path / "tone.wav", 3000 * np.sin(2 * np.pi * 440 * t))
    res = call(f"sip:readback@127.0.0.1:{gw.port}", "--play", str(tone), "--speak-at-s", "0.2", "--duration", "15")
    assert res["answered"] and res["remote_hangup"]
    end = _end_of(gw, "readback", -1)
    assert end["reason"] == "read_back", end
    [pause] = end["recording_pauses"]
    assert pause["by"] == "agent" and end["recording_paused_s"] == round(pause["end_s"] - pause["start_s"], 2), end
    said = [e["text"] for e in gw.events("agent_say") if e["call"] == end["call"]]
    assert len(said) == 3 and said[1].startswith("Your card number is"), said  # the log has it redacted
    with wave.open(str(end["recording"])) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    caller, agent = levels_db(pcm[:, 0]), levels_db(pcm[:, 1])
    a, b = int(pause["start_s"] * 10), int(pause["end_s"] * 10)  # 100 ms windows
    assert 2.5 < pause["end_s"] - pause["start_s"] < 8, pause  # the read-back, as espeak-ng says it
    assert (caller[a + 1 : b - 1] < -80).all() and (agent[a + 1 : b - 1] < -80).all(), (a, b, agent.round())
    assert (agent[:a] > -40).sum() >= 5 and (agent[b:] > -40).sum() >= 5, (a, b, agent.round())  # heard around it
    assert (caller[b + 1 : b + 6] > -35).mean() >= 0.8, caller.round()  # the caller is recorded again
    [rec] = [r for r in read_records(gw.config.parent / "records/calls.db")[0] if r["call"] == end["call"]]
    assert rec["recording_pauses"] == [pause]


def _end_of(gw: Gateway, called: str, index: int) -> dict[str, object]:
    calls = [e["call"] for e in gw.events("call_incoming") if e["called"] == called]
    return gw.wait_event("call_end", 10, call=calls[index])
