"""The stereo call recorder on exact clock times, and a CallRecording's file, pause codes and transcript."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path

import numpy as np

from media.frames import FRAME_BYTES, FRAME_SAMPLES
from media.recorder import StereoRecorder
from telephony.config import RecordingConfig
from telephony.recordings import CallRecording


def frame(value: int) -> bytes:
    return np.full(FRAME_SAMPLES, value, dtype="<i2").tobytes()


def channels(pcm: bytes) -> tuple[np.ndarray, np.ndarray]:
    a = np.frombuffer(pcm, dtype="<i2").reshape(-1, 2)
    return a[::FRAME_SAMPLES, 0], a[::FRAME_SAMPLES, 1]  # one sample per frame


def test_frames_land_in_their_slot_and_gaps_are_silence() -> None:
    r = StereoRecorder()
    t0 = 100.0
    for i in range(6):
        t = t0 + i * 0.02 + 0.001 * (i % 2)  # clock jitter within a slot
        if i != 3:  # no RTP for one tick
            r.inbound(t, frame(i + 1))
        r.outbound(t + 0.0003, frame(-(i + 1)))
    left, right = channels(r.take())
    assert left.tolist() == [1, 2, 3, 0, 5, 6] and right.tolist() == [-1, -2, -3, -4, -5, -6]
    assert r.take() == b""


def test_take_until_keeps_the_young_frames_and_drops_late_ones() -> None:
    r = StereoRecorder()
    for i in range(10):
        r.inbound(i * 0.02, frame(1))
        r.outbound(i * 0.02, frame(2))
    first = r.take(until=0.1)
    assert len(first) == 5 * FRAME_BYTES * 2 and r.next_slot == 5
    r.inbound(0.04, frame(9))  # for a slot already written: dropped
    left, right = channels(r.take())
    assert left.tolist() == [1] * 5 and right.tolist() == [2] * 5


def test_paused_frames_are_silence_in_both_channels() -> None:
    r = StereoRecorder()
    for i in range(4):
        r.paused = i in (1, 2)
        r.inbound(i * 0.02, frame(7))
        r.outbound(i * 0.02, frame(8))
    left, right = channels(r.take())
    assert left.tolist() == [7, 0, 0, 7] and right.tolist() == [8, 0, 0, 8]


def test_call_recording_pauses_by_code_and_writes_wav_and_transcript(tmp_path: Path) -> None:
    logged: list[str] = []
    rec = CallRecording("c@x", tmp_path / "r/c.wav", RecordingConfig(pause_code="*1", resume_code="*2"),
                        lambda name, **f: logged.append(name))

    async def run() -> dict[str, object]:
        rec.start(asyncio.get_running_loop())
        for i in range(100):  # 2 s; keys *1 at 0.5 s, *2 at 1.5 s
            t = i * 0.02
            if i in (25, 75):
                for key in ("*1" if i == 25 else "*2"):
                    rec.on_dtmf(key, t)
            rec.recorder.inbound(t, frame(3))
            rec.recorder.outbound(t, frame(4))
        rec.on_dtmf("1", 2.0)  # a stray key: no code
        return rec.close([{"text": "hello"}], 2.0)

    out = asyncio.run(run())
    assert out == {"recording": str(tmp_path / "r/c.wav"), "recording_s": 2.0, "recording_paused_s": 1.0,
                   "transcript": str(tmp_path / "r/c.json")}
    assert logged == ["recording_paused", "recording_resumed"]
    with wave.open(str(tmp_path / "r/c.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (2, 2, 16000, 32000)
        left, right = channels(w.readframes(w.getnframes()))
    assert left.tolist() == [3] * 25 + [0] * 50 + [3] * 25 and right.tolist() == [4] * 25 + [0] * 50 + [4] * 25
    assert json.loads((tmp_path / "r/c.json").read_text()) == {"call": "c@x", "turns": [{"text": "hello"}]}


def test_a_write_error_is_logged_and_the_call_goes_on(tmp_path: Path) -> None:
    logged: list[tuple[str, dict[str, object]]] = []
    (tmp_path / "file").write_text("")
    rec = CallRecording("c", tmp_path / "file/c.wav", RecordingConfig(), lambda name, **f: logged.append((name, f)))
    rec.recorder.inbound(0.0, frame(1))
    assert rec.close([], 0.0) == {}
    assert [n for n, _ in logged] == ["recording_error"] and logged[0][1]["path"] == str(tmp_path / "file/c.wav")
