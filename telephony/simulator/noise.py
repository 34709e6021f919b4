"""Line noise for the simulated caller: white or pink Gaussian noise at a signal-to-noise ratio relative to the
caller's own speech level, added to every frame the phone sends.

Pink (1/f) noise comes from `colorednoise`. The speech level is the mean power of the script's utterances over
their active frames (those within 30 dB of the loudest frame), a simple stand-in for ITU-T P.56's active speech
level; a script that says nothing takes P.56's nominal -26 dBov.
"""

from __future__ import annotations

import colorednoise
import numpy as np

from media.frames import FRAME_SAMPLES, SAMPLE_RATE

NOMINAL_SPEECH_DBFS = -26.0
ACTIVE_RANGE_DB = 30.0
LOOP_S = 10
"""Seconds of noise generated once and sent in a loop."""


def speech_level_dbfs(utterances: list[bytes]) -> float:
    """Active speech level (dBFS) of 16 kHz PCM16 utterances; NOMINAL_SPEECH_DBFS when there are none."""
    x = np.concatenate([np.frombuffer(u, dtype="<i2") for u in utterances] or [np.zeros(0, "<i2")])
    n = x.size // FRAME_SAMPLES
    if n == 0:
        return NOMINAL_SPEECH_DBFS
    power = np.mean(x[: n * FRAME_SAMPLES].astype(np.float64).reshape(n, FRAME_SAMPLES) ** 2, axis=1) / 32768.0**2
    db = 10 * np.log10(np.maximum(power, 1e-12))
    active = power[db >= db.max() - ACTIVE_RANGE_DB]
    return float(10 * np.log10(max(float(active.mean()), 1e-12)))


def noise(level_dbfs: float, color: str, seed: int, seconds: int = LOOP_S) -> np.ndarray:
    """`seconds` of white or pink Gaussian noise at an RMS of `level_dbfs` (float32, 16 kHz samples)."""
    exponent = {"white": 0.0, "pink": 1.0}[color]
    x = colorednoise.powerlaw_psd_gaussian(exponent, seconds * SAMPLE_RATE, random_state=seed)
    x = x / np.sqrt(np.mean(x**2)) * 32768.0 * 10 ** (level_dbfs / 20)
    return np.asarray(x, dtype=np.float32)
