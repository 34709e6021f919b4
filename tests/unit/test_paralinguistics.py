"""Tone-of-voice features on espeak-ng speech and synthetic tones, also through a G.711 round trip."""

from __future__ import annotations

import functools
import io
import subprocess
import wave

import numpy as np
import pytest

from media.frames import FLOOR_DBFS, SAMPLE_RATE
from media.paralinguistics import Prosody, analyse, analyse_pcm, arousal, label
from media.resample import resample

SENTENCE = "I have been waiting for an hour and nobody has called me back about my account."


@functools.cache
def espeak(pitch: int = 50, speed: int = 175, amplitude: int = 100, text: str = SENTENCE) -> bytes:
    cmd = ["espeak-ng", "-v", "en", "-p", str(pitch), "-s", str(speed), "-a", str(amplitude), "--stdout", text]
    with wave.open(io.BytesIO(subprocess.run(cmd, capture_output=True, check=True).stdout)) as w:
        return resample(w.readframes(w.getnframes()), w.getframerate())


def tone(f0: float, seconds: float = 1.0, lowest_hz: float = 0.0, db: float = -20.0) -> bytes:
    """Harmonics of f0 with 1/k amplitudes up to 3400 Hz (none below lowest_hz), scaled to `db` dBFS RMS."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    ks = [k for k in range(1, int(3400 / f0) + 1) if k * f0 >= lowest_hz]
    x = sum(np.sin(2 * np.pi * k * f0 * t + k) / k for k in ks)
    x = x * 10 ** (db / 20) * 32768 / np.sqrt(np.mean(x**2))
    return np.round(x).astype("<i2").tobytes()


def g711(pcm: bytes) -> bytes:
    """16 kHz -> 8 kHz -> mu-law (8 bits) -> linear -> 16 kHz."""
    x = np.frombuffer(resample(pcm, SAMPLE_RATE, 8000), dtype="<i2") / 32768.0
    mu = 255.0
    code = np.round(np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu) * 127)  # the 8-bit companded value
    y = np.sign(code) * np.expm1(np.abs(code) / 127 * np.log1p(mu)) / mu
    return resample(np.round(y * 32767).astype("<i2").tobytes(), 8000)


def near(value: float, expected: float, rel: float) -> bool:
    return abs(value - expected) <= rel * expected


@pytest.mark.parametrize("f0", [150.0, 220.0])
@pytest.mark.parametrize("lowest_hz", [0.0, 300.0], ids=["full", "no-fundamental"])
def test_tone_pitch_is_exact(f0, lowest_hz):
    p = analyse_pcm(tone(f0, lowest_hz=lowest_hz))
    assert near(p.mean_f0_hz, f0, 0.03), p
    assert p.voiced_fraction > 0.95
    assert p.f0_range_st < 0.5
    assert p.mean_dbfs == pytest.approx(-20.0, abs=0.5)


@pytest.mark.parametrize("f0", [120.0, 220.0])
def test_pitch_survives_g711(f0):
    assert near(analyse_pcm(g711(tone(f0))).mean_f0_hz, f0, 0.05)


def test_speech_pitch_survives_g711():
    clean, coded = analyse_pcm(espeak()), analyse_pcm(g711(espeak()))
    assert near(coded.mean_f0_hz, clean.mean_f0_hz, 0.05), (clean, coded)
    assert near(coded.syllables_per_s, clean.syllables_per_s, 0.15), (clean, coded)


def test_float_and_pcm_entry_points_agree():
    pcm = espeak()
    assert analyse(np.frombuffer(pcm, dtype="<i2") / 32768.0) == analyse_pcm(pcm)


def test_higher_espeak_pitch_reads_higher():
    f0 = [analyse_pcm(espeak(pitch=p)).mean_f0_hz for p in (20, 50, 80)]
    assert f0[0] > 60 and f0[0] * 1.15 < f0[1] and f0[1] * 1.15 < f0[2] < 250, f0


def test_faster_espeak_reads_more_syllables_per_second():
    slow, normal, fast = (analyse_pcm(espeak(speed=s)) for s in (120, 175, 260))
    assert slow.syllables_per_s * 1.1 < normal.syllables_per_s
    assert normal.syllables_per_s * 1.1 < fast.syllables_per_s
    assert slow.syllables_per_s > 2.5 and fast.syllables_per_s < 9
    assert 15 <= slow.syllables <= 26  # the sentence has 22 syllables


def test_loud_high_fast_speech_is_more_aroused_than_calm_speech():
    calm = analyse_pcm(espeak(pitch=25, speed=130, amplitude=50))
    aroused = analyse_pcm(espeak(pitch=85, speed=240, amplitude=180))
    assert aroused.mean_dbfs > calm.mean_dbfs + 10
    assert aroused.arousal > calm.arousal + 0.2, (calm, aroused)
    assert calm.label == "calm" and aroused.label != "calm"


def test_speech_levels_and_voicing_are_plausible():
    p = analyse_pcm(espeak())
    assert 0.4 < p.voiced_fraction < 0.95
    assert p.mean_dbfs < p.peak_dbfs < 0
    assert 5 < p.dynamic_range_db < 35
    assert 0.8 * p.duration_s < p.speech_s <= p.duration_s


@pytest.mark.parametrize("noise_db", [None, -70.0])
def test_silence_has_no_speech(noise_db):
    x = np.zeros(SAMPLE_RATE)
    if noise_db is not None:
        x = np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 10 ** (noise_db / 20)
    p = analyse(x)
    assert p.voiced_fraction == 0 and p.mean_f0_hz == 0 and p.syllables == 0 and p.speech_s == 0
    assert p.mean_dbfs == FLOOR_DBFS
    assert p.arousal == 0 and p.label == "calm"


@pytest.mark.parametrize("pcm", [b"", bytes(2), bytes(200), tone(150, 0.1)], ids=["empty", "1-sample", "6ms", "tone"])
def test_tiny_inputs_do_not_crash(pcm):
    p = analyse_pcm(pcm)
    assert isinstance(p, Prosody) and 0 <= p.arousal <= 1
    assert p.duration_s == len(pcm) / 2 / SAMPLE_RATE


def test_100ms_of_speech_gives_sensible_values():
    pcm = espeak()
    mid = len(pcm) // 4 // 2 * 2
    p = analyse_pcm(pcm[mid : mid + SAMPLE_RATE // 5])  # 100 ms
    assert all(np.isfinite(v) for v in (p.mean_f0_hz, p.mean_dbfs, p.syllables_per_s, p.arousal))
    assert p.speech_s <= 0.1 + 1e-9
    assert p.syllables <= 1 and p.syllables_per_s <= 1 / 0.3 + 1e-9
    assert p.mean_f0_hz == 0 or 60 <= p.mean_f0_hz <= 400


def test_100ms_tone_is_voiced():
    p = analyse_pcm(tone(150, 0.1))
    assert near(p.mean_f0_hz, 150, 0.03) and p.voiced_fraction > 0.5


def test_arousal_formula_bounds_and_labels():
    assert arousal(0.0, 0.0, FLOOR_DBFS, 0.0) == 0.0
    assert arousal(400.0, 24.0, 0.0, 10.0) == pytest.approx(1.0)
    assert arousal(110, 4, -24, 4) < arousal(110, 4, -24, 6) < arousal(180, 4, -24, 6) < arousal(180, 8, -14, 6)
    assert [label(s) for s in (0.1, 0.5, 0.9)] == ["calm", "neutral", "aroused"]
