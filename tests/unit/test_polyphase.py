"""The streaming polyphase resampler: levels, aliasing, chunk independence and delay."""

from __future__ import annotations

import numpy as np
import pytest

from media.polyphase import PolyphaseResampler


def tone(freq: float, rate: int, seconds: float = 0.5) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return bytes((np.sin(2 * np.pi * freq * t) * 10000).astype("<i2").tobytes())


def level_db(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)[200:]
    return float(20 * np.log10(np.sqrt((x**2).mean()) / (10000 / np.sqrt(2)) + 1e-12))


def chunked(r: PolyphaseResampler, pcm: bytes, size: int) -> bytes:
    return b"".join(r.process(pcm[i : i + size]) for i in range(0, len(pcm), size))


@pytest.mark.parametrize(("rate_in", "rate_out"), [(16000, 8000), (16000, 24000), (24000, 16000), (8000, 16000)])
def test_speech_band_passes_at_unity_and_the_length_follows_the_ratio(rate_in: int, rate_out: int) -> None:
    for freq in (300, 1000, 3000):
        out = chunked(PolyphaseResampler(rate_in, rate_out), tone(freq, rate_in), rate_in // 50 * 2)
        assert len(out) // 2 == rate_out // 2
        assert abs(level_db(out)) < 0.2, (freq, level_db(out))


@pytest.mark.parametrize(("rate_in", "rate_out", "freq"), [(16000, 8000, 5000), (24000, 16000, 10000)])
def test_what_would_alias_is_filtered_out(rate_in: int, rate_out: int, freq: int) -> None:
    assert level_db(PolyphaseResampler(rate_in, rate_out).process(tone(freq, rate_in))) < -60


def test_chunks_of_any_size_give_the_same_samples_and_every_chunk_gives_output() -> None:
    x = tone(1000, 24000)
    whole = PolyphaseResampler(24000, 16000).process(x)
    assert chunked(PolyphaseResampler(24000, 16000), x, 998) == whole
    r = PolyphaseResampler(16000, 8000)
    assert [len(r.process(bytes(640))) for _ in range(5)] == [320] * 5  # no blocks: 20 ms in, 20 ms out


def test_rejects_a_zero_rate() -> None:
    with pytest.raises(ValueError, match="positive"):
        PolyphaseResampler(0, 16000)
