"""Renderings made ready to play: 16 kHz, without the near-silence that leads them (time the caller waits)."""

from __future__ import annotations

import numpy as np

from agents.speech.tts import PiperTts, for_playout
from media.frames import SAMPLE_RATE
from media.resample import resample


def _pcm(x: np.ndarray) -> bytes:
    return np.asarray(x, dtype="<i2").tobytes()


def test_leading_silence_is_cut_to_ten_ms_before_the_sound() -> None:
    tone = (8000 * np.sin(np.arange(SAMPLE_RATE // 2) * 2 * np.pi * 440 / SAMPLE_RATE)).astype(np.int16)
    quiet = np.full(SAMPLE_RATE // 10, 3, np.int16)  # 100 ms, 68 dB down: below -40 dB of the peak
    out = for_playout(_pcm(np.concatenate([quiet, tone])), SAMPLE_RATE)
    assert len(out) // 2 == len(tone) + SAMPLE_RATE // 100
    assert out[-len(tone) * 2 :] == _pcm(tone)


def test_silence_alone_and_sound_from_the_start_are_kept_whole() -> None:
    silence = _pcm(np.zeros(SAMPLE_RATE // 5, np.int16))
    assert for_playout(silence, SAMPLE_RATE) == silence
    tone = _pcm((8000 * np.sin(np.arange(SAMPLE_RATE // 5) * 0.3)).astype(np.int16))
    assert for_playout(tone, SAMPLE_RATE) == tone


def test_a_piper_sentence_starts_sooner_and_loses_nothing_after_its_onset() -> None:
    pcm, rate = PiperTts().synthesize("Reception is open from seven in the morning.")
    whole = resample(pcm, rate)
    out = for_playout(pcm, rate)
    cut_ms = (len(whole) - len(out)) / 2 / SAMPLE_RATE * 1000
    assert 10 <= cut_ms <= 200, cut_ms  # piper's lead-in, measured about 40 ms
    assert whole.endswith(out)
