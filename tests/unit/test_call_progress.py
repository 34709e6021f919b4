"""Call progress on real recordings (Asterisk's prompts through G.711) and generated tones: SIT, a person's
greeting, a machine's greeting and beep."""

from __future__ import annotations

import wave

import numpy as np
import numpy.typing as npt

from media.call_progress import SIT_HZ, CallProgress, Human, Machine, MessageCue, Progress, Sit, tone_hz
from media.g711 import ulaw_decode, ulaw_encode
from media.resample import resample
from media.vad import Vad
from tests.prompts import SOUNDS

RATE = 16000


def prompt(name: str) -> npt.NDArray[np.int16]:
    """A prompt as the gateway hears it: through µ-law at 8 kHz, up to 16 kHz."""
    with wave.open(str(SOUNDS / f"{name}.wav")) as w:
        pcm = w.readframes(w.getnframes())
    return np.frombuffer(resample(ulaw_decode(ulaw_encode(pcm)), 8000, RATE), dtype=np.int16)


def tone(hz: float, ms: int, dbfs: float = -16.0) -> npt.NDArray[np.int16]:
    t = np.arange(RATE * ms // 1000) / RATE
    return (np.sin(2 * np.pi * hz * t) * 32767 * 10 ** (dbfs / 20)).astype(np.int16)


def silence(ms: int) -> npt.NDArray[np.int16]:
    return np.zeros(RATE * ms // 1000, dtype=np.int16)


def run(audio: npt.NDArray[np.int16]) -> list[Progress]:
    cp, vad, out = CallProgress(), Vad(2), []
    for i in range(len(audio) // 320):
        frame = audio[i * 320 : (i + 1) * 320]
        out += cp.process(i * 0.02, frame, vad.is_speech(frame.tobytes()))
    return out


def test_tone_frequency_is_measured_within_a_few_hz() -> None:
    for hz in (*SIT_HZ, 440.0, 700.0, 1004.0):
        got = tone_hz(tone(hz, 20))
        assert got is not None and abs(got - hz) < 5, (hz, got)
    assert tone_hz(silence(20)) is None
    speech = prompt("vm-intro")
    frames = range(0, len(speech) - 320, 320)
    assert sum(tone_hz(speech[i : i + 320]) is not None for i in frames) < 0.1 * len(frames)  # single frames only


def test_sit_tones_before_an_intercept_message() -> None:
    audio = np.concatenate([silence(200), tone(SIT_HZ[0], 276), tone(SIT_HZ[1], 276), tone(SIT_HZ[2], 380),
                            prompt("ss-noservice")])
    out = run(audio)
    assert len(out) == 1 and isinstance(out[0], Sit) and 0.85 < out[0].at < 1.4, out


def test_tones_out_of_order_are_not_sit() -> None:
    audio = np.concatenate([tone(SIT_HZ[2], 380), tone(SIT_HZ[1], 276), tone(SIT_HZ[0], 276), silence(3000)])
    assert not any(isinstance(p, Sit) for p in run(audio))


def test_a_person_says_hello_and_waits() -> None:
    out = run(np.concatenate([silence(400), prompt("hello"), silence(2000)]))
    assert len(out) == 1 and isinstance(out[0], Human) and 300 < out[0].greeting_ms < 1200, out


def test_a_machine_greets_at_length_then_beeps() -> None:
    intro, beep = prompt("vm-intro"), prompt("beep")
    out = run(np.concatenate([silence(300), intro, silence(300), beep, silence(1000)]))
    assert [type(p) for p in out] == [Machine, MessageCue], out
    machine, cue = out
    assert isinstance(machine, Machine) and isinstance(cue, MessageCue)
    assert machine.reason == "long_greeting" and 1.7 < machine.at < 2.5
    end_of_beep = (300 + len(intro) / 16 + 300 + len(beep) / 16) / 1000
    assert cue.beep_hz is not None and abs(cue.beep_hz - 700) < 20 and abs(cue.at - end_of_beep) < 0.1, cue


def test_a_machine_without_a_beep_is_cued_by_the_silence_after_its_greeting() -> None:
    intro = prompt("vm-intro")
    out = run(np.concatenate([intro, silence(4000)]))
    assert [type(p) for p in out] == [Machine, MessageCue]
    cue = out[1]
    assert isinstance(cue, MessageCue) and cue.beep_hz is None and len(intro) / 16000 + 2.5 < cue.at < len(
        intro) / 16000 + 3.5


def test_no_speech_at_all_is_a_machine() -> None:
    out = run(silence(3000))
    assert isinstance(out[0], Machine) and out[0].reason == "initial_silence" and abs(out[0].at - 2.5) < 0.05
