"""Telephony tones on the inbound path (in-band DTMF, call progress, fax and test tones), which are never speech.

A 20 ms frame resolves 50 Hz, so a voice's harmonics can look like a tone pair in one frame (about a third of the
frames of Asterisk's recorded prompts put 95% of their energy in two peaks, measured). A frame counts as a tone only
when its one or two dominant peaks sit on known tone frequencies, hold 95% of the energy, and the previous frame
looked the same at the same level: 1.0% of the prompts' speech frames pass that, every tone tried does from its
second frame (measured). Hand-written: no Python library does per-frame tone classification on a live stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

TONE_HZ = (
    697, 770, 852, 941, 1209, 1336, 1477, 1633,  # DTMF rows and columns
    350, 440, 480, 620,  # call progress (dial, ring-back, busy)
    1000, 1004, 1100, 1400, 2100, 2225,  # test tones, fax CNG and CED, modem answer
)


@dataclass(frozen=True)
class ToneSettings:
    min_share: float = 0.95
    """Share of a frame's energy (0-1) its one or two dominant peaks must hold for the frame to look like a tone."""
    second_peak: float = 0.1
    """A second peak with less energy than this share (0-1) is leakage of the first (a single tone)."""
    level_steady_db: float = 1.5
    """The most a tone's level may change from one frame to the next, in dB."""


class ToneDetector:
    """Feed every inbound frame (16 kHz PCM16 samples and its level); True while a steady tone is on the line."""

    def __init__(self, settings: ToneSettings | None = None, frame_samples: int = 320, rate: int = 16000) -> None:
        self.s = settings or ToneSettings()
        self._window = np.hanning(frame_samples).astype(np.float32)
        hz_per_bin = rate / frame_samples
        self._bins = {b for f in TONE_HZ for b in (int(np.floor(f / hz_per_bin)), int(np.ceil(f / hz_per_bin)))}
        self._prev: tuple[npt.NDArray[np.int16] | None, float, bool | None] = (None, 0.0, False)
        """The previous frame's samples, level, and whether it looked like a tone (None: not looked at yet)."""

    def _looks_like_tone(self, samples: npt.NDArray[np.int16]) -> bool:
        spec = np.abs(np.fft.rfft(samples.astype(np.float32) * self._window)) ** 2
        total = float(spec.sum())
        if total <= 0.0:
            return False
        peaks: list[tuple[int, float]] = []
        for _ in range(2):  # a sinusoid spreads over ~3 bins with a Hann window: take each peak with its neighbours
            k = int(np.argmax(spec))
            lo, hi = max(0, k - 1), min(spec.size, k + 2)
            peaks.append((k, float(spec[lo:hi].sum()) / total))
            spec[lo:hi] = 0.0
        (k1, s1), (k2, s2) = peaks
        s = self.s
        return s1 + s2 >= s.min_share and k1 in self._bins and (s2 < s.second_peak or k2 in self._bins)

    def process(self, samples: npt.NDArray[np.int16], level_db: float, needed: bool = True) -> bool:
        """Whether this frame and the previous one are the same steady tone. With `needed=False` (the caller has
        already ruled the frame out for another reason) only the frame is kept for the next call: the spectrum,
        most of this detector's cost, is taken only of frames that may matter."""
        prev, prev_level, prev_tone = self._prev
        self._prev = (samples, level_db, None)
        if not needed:
            return False
        tone = samples.size == self._window.size and self._looks_like_tone(samples)
        self._prev = (samples, level_db, tone)
        if not tone or abs(level_db - prev_level) >= self.s.level_steady_db:
            return False
        if prev_tone is None:
            prev_tone = prev is not None and prev.size == self._window.size and self._looks_like_tone(prev)
        return prev_tone
