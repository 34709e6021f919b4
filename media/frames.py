"""The one frame format inside voicegate: 16 kHz mono signed 16-bit little-endian, 20 ms."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
FRAME_BYTES = FRAME_SAMPLES * 2
SILENCE = bytes(FRAME_BYTES)
FLOOR_DBFS = -100.0


def level_dbfs(frame: bytes) -> float:
    """RMS level of a PCM16 frame in dB relative to full scale (-100 for digital silence)."""
    return samples_dbfs(np.frombuffer(frame, dtype="<i2"))


def samples_dbfs(samples: npt.NDArray[np.int16]) -> float:
    """`level_dbfs` of samples already read (the sum of squares is exact in float64 for any frame length here)."""
    if samples.size == 0:
        return FLOOR_DBFS
    a = samples.astype(np.float64)
    ms = float(np.dot(a, a)) / a.size
    if ms <= 0.0:
        return FLOOR_DBFS
    return max(FLOOR_DBFS, 10.0 * math.log10(ms / (32768.0 * 32768.0)))


def split_frames(pcm: bytes) -> list[bytes]:
    """Cut PCM16 into whole frames, padding the last one with silence."""
    if len(pcm) % FRAME_BYTES:
        pcm = pcm + bytes(FRAME_BYTES - len(pcm) % FRAME_BYTES)
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
