"""Sample-rate conversion of agent audio to the 16 kHz frame rate, with soxr.

Agent audio (piper 22.05 kHz, S2S 24 kHz) is resampled with state across chunks: a stateless per-chunk resample
is what makes other frameworks crackle. soxr's stream buffers some milliseconds, which the playout buffer absorbs.
"""

from __future__ import annotations

import numpy as np
import soxr

from media.frames import SAMPLE_RATE


class StreamResampler:
    """Stateful PCM16 resampler from `in_rate` to 16 kHz."""

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE) -> None:
        if in_rate <= 0:
            raise ValueError(f"input sample rate must be positive, got {in_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16")

    def process(self, pcm: bytes, last: bool = False) -> bytes:
        if self._stream is None:
            return pcm
        x = np.frombuffer(pcm, dtype="<i2")
        return bytes(self._stream.resample_chunk(x, last=last).astype("<i2").tobytes())


def resample(pcm: bytes, in_rate: int, out_rate: int = SAMPLE_RATE) -> bytes:
    """Resample a whole utterance at once (prompt rendering)."""
    if in_rate == out_rate:
        return pcm
    x = np.frombuffer(pcm, dtype="<i2")
    return bytes(soxr.resample(x, in_rate, out_rate).astype("<i2").tobytes())
