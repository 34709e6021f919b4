"""The stereo call recorder tick by tick, and a CallRecording's file, pause codes and transcript."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path

import numpy as np

from media.frames import FRAME_BYTES, FRAME_SAMPLES
from media.pipeline import CallMedia
from media.recorder import StereoRecorder
from telephony.config import RecordingConfig
from telephony.recordings import CallRecording


def frame(value: int) -> bytes:
    return np.full(FRAME_SAMPLES, value, dtype="<i2").tobytes()


def channels(pcm: bytes) -> tuple[list[int], list[int]]:
    a = np.frombuffer(pcm, dtype="<i2").reshape(-1, 2)
    return a[::FRAME_SAMPLES, 0].tolist(), a[::FRAME_SAMPLES, 1].tolist()  # one sample per frame


def test_each_tick_is_one_slot_and_a_tick_without_caller_audio_is_silence() -> None:
    r = StereoRecorder()
    for i in range(6):
        r.outbound(frame(-(i + 1)))
        if i != 3:  # no RTP for one tick
            r.inbound(frame(i + 1))
    assert channels(r.take()) == ([1, 2, 3, 0, 5, 6], [-1, -2, -3, -4, -5, -6])
    assert r.take() == b""


def test_take_upto_keeps_the_newest_slots() -> None:
    r = StereoRecorder()
    for _ in range(10):
        r.outbound(frame(2))
        r.inbound(frame(1))
    assert len(r.take(upto=5)) == 5 * FRAME_BYTES * 2 and r.taken == 5
    assert channels(r.take(upto=8)) == ([1] * 3, [2] * 3)
    assert channels(r.take()) == ([1] * 2, [2] * 2)


def test_a_backlog_of_caller_frames_fills_the_next_slots_and_nothing_is_lost() -> None:
    """A stream transport's clock stalled (ticks skipped) and then read five caller frames in one tick: the echo
    agent plays them back one per tick, and the recording keeps all five, a tick apart, as the agent heard them."""
    r = StereoRecorder()
    r.outbound(frame(-1))
    r.inbound(frame(1))
    for i in range(2, 7):  # the backlog, in the same tick
        r.inbound(frame(i))
    for i in range(1, 4):
        r.outbound(frame(-i - 1))
        r.inbound(frame(i + 6))
    assert channels(r.take(upto=4)) == ([1, 2, 3, 4], [-1, -2, -3, -4])
    assert channels(r.take()) == ([5, 6, 7, 8, 9], [0] * 5)  # the call's end: the caller's queued frames too


def test_paused_or_masked_frames_are_silence_in_both_channels() -> None:
    r = StereoRecorder()
    for i in range(5):
        r.paused = i in (1, 2)
        r.masked = i == 3
        r.outbound(frame(8))
        r.inbound(frame(7))
    assert channels(r.take()) == ([7, 0, 0, 0, 7], [8, 0, 0, 0, 8])


def test_pauses_are_intervals_of_the_recordings_time_line_with_who_paused() -> None:
    r = StereoRecorder()
    for i in range(100):
        if i == 10:
            assert r.set_paused(True, "agent") and not r.set_paused(True, "dtmf")  # already paused: no new stretch
        if i == 30:
            assert r.set_paused(False, "agent") and not r.set_paused(False, "agent")
        if i == 90:
            r.set_paused(True, "dtmf")
        r.outbound(frame(2))
        r.inbound(frame(1))
    left, right = channels(r.take())
    assert left == [1] * 10 + [0] * 20 + [1] * 60 + [0] * 10 and right == [2] * 10 + [0] * 20 + [2] * 60 + [0] * 10
    assert r.pause_intervals() == [{"start_s": 0.2, "end_s": 0.6, "by": "agent"},
                                   {"start_s": 1.8, "end_s": 2.0, "by": "dtmf"}]  # the last one lasts to the end
    assert r.paused_ticks == 30


def test_call_media_pauses_its_recorder_and_says_when_there_is_none() -> None:
    media = CallMedia(lambda ev: None)
    assert not media.pause_recording(True, "agent")
    rec = StereoRecorder()
    media.set_recorder(rec)
    assert media.pause_recording(True, "agent") and rec.paused
    assert media.pause_recording(False, "agent") and not rec.paused


def test_call_media_feeds_the_recorder_in_echo_mode_and_with_an_agent() -> None:
    media = CallMedia(lambda ev: None)
    rec = StereoRecorder()
    media.set_recorder(rec)
    media.set_loopback(True)
    for i in range(3):
        media.next_outbound(i * 0.02)
        media.on_inbound(i * 0.02, frame(5))
    media.set_loopback(False)
    media.push(frame(6), 1)
    media.next_outbound(0.06)
    media.mask_recording(True)
    media.next_outbound(0.08)
    media.on_inbound(0.08, frame(5))
    assert channels(rec.take()) == ([5, 5, 5, 0, 0], [0, 5, 5, 6, 0])  # echo: the caller's frame a tick later


def test_call_recording_pauses_by_code_and_writes_wav_and_transcript(tmp_path: Path) -> None:
    logged: list[str] = []
    rec = CallRecording("c@x", tmp_path / "r/c.wav", RecordingConfig(pause_code="*1", resume_code="*2"),
                        lambda name, **f: logged.append(name))

    async def run() -> dict[str, object]:
        rec.start(asyncio.get_running_loop())
        for i in range(100):  # 2 s; keys *1 at 0.5 s, *2 at 1.5 s
            if i in (25, 75):
                for key in ("*1" if i == 25 else "*2"):
                    rec.on_dtmf(key)
            rec.recorder.outbound(frame(4))
            rec.recorder.inbound(frame(3))
        rec.on_dtmf("1")  # a stray key: no code
        return rec.close([{"text": "hello"}])

    out = asyncio.run(run())
    assert out == {"recording": str(tmp_path / "r/c.wav"), "recording_s": 2.0, "recording_paused_s": 1.0,
                   "recording_pauses": [{"start_s": 0.5, "end_s": 1.5, "by": "dtmf"}],
                   "transcript": str(tmp_path / "r/c.json")}
    assert logged == ["recording_paused", "recording_resumed"]
    with wave.open(str(tmp_path / "r/c.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (2, 2, 16000, 32000)
        left, right = channels(w.readframes(w.getnframes()))
    assert left == [3] * 25 + [0] * 50 + [3] * 25 and right == [4] * 25 + [0] * 50 + [4] * 25
    assert json.loads((tmp_path / "r/c.json").read_text()) == {"call": "c@x", "turns": [{"text": "hello"}]}


def test_a_write_error_is_logged_and_the_call_goes_on(tmp_path: Path) -> None:
    logged: list[tuple[str, dict[str, object]]] = []
    (tmp_path / "file").write_text("")
    rec = CallRecording("c", tmp_path / "file/c.wav", RecordingConfig(), lambda name, **f: logged.append((name, f)))
    rec.recorder.outbound(frame(1))
    assert rec.close([]) == {}
    assert [n for n, _ in logged] == ["recording_error"] and logged[0][1]["path"] == str(tmp_path / "file/c.wav")
