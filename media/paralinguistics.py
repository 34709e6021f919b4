"""Tone of voice of one caller utterance: pitch, loudness, speaking rate and a heuristic arousal score.

Hand-written on numpy (and soxr) because no lightweight library fits per-utterance prosody on telephone speech:
librosa pulls numba, llvmlite and scipy, and its pYIN (an HMM over pitch candidates) is far slower than YIN;
praat-parselmouth has Praat's reference pitch and intensity but is a ~10 MB GPL-3 binary (voicegate is MIT);
pyworld is a vocoder analyser, F0 only. Pitch is YIN (de Cheveigne and Kawahara, 2002), vectorised over 40 ms frames
at a 10 ms hop, 60-400 Hz, on the signal taken to 8 kHz: YIN reads the period from the harmonics, so it copes with
G.711 cutting the fundamental below 300 Hz. Syllable nuclei are prominent peaks of the 300-3000 Hz energy near voiced
frames (after de Jong and Wempe, 2009). About 3 ms per second of audio on one core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import soxr

from media.frames import FLOOR_DBFS, SAMPLE_RATE

Samples = npt.NDArray[np.floating]
Label = Literal["calm", "neutral", "aroused"]

RATE = 8000  # pitch and band energy are read at 8 kHz: all of the telephone band, at half the cost
HOP_MS, WINDOW_MS = 10, 40
HOP, WINDOW = RATE * HOP_MS // 1000, RATE * WINDOW_MS // 1000
WIDE_HOP, WIDE_WINDOW = SAMPLE_RATE * HOP_MS // 1000, SAMPLE_RATE * WINDOW_MS // 1000  # levels, on the input
F0_MIN_HZ, F0_MAX_HZ = 60.0, 400.0
TAU_MIN, TAU_MAX = int(RATE / F0_MAX_HZ), int(np.ceil(RATE / F0_MIN_HZ))
YIN_WINDOW = WINDOW - TAU_MAX  # YIN compares a frame's first 23 ms with itself shifted by up to TAU_MAX
YIN_THRESHOLD = 0.3  # cumulative-mean-normalised difference below which a frame is voiced
SPEECH_FLOOR_DBFS = -55.0  # frames quieter than this are never speech
SPEECH_RANGE_DB = 35.0  # ... nor those this far below the loudest frame
BAND_HZ = (300.0, 3000.0)
NUCLEUS_PROMINENCE_DB = 3.0
NUCLEUS_SPACING = 10  # frames (100 ms) between syllable nuclei
PAUSE_FRAMES = 30  # silent runs this long (300 ms) are pauses, not speech time
MIN_SPEECH_S = 0.3  # speech-time floor, so that one short syllable does not read as fast speech
CALM_BELOW, AROUSED_ABOVE = 0.35, 0.6


@dataclass(frozen=True)
class Prosody:
    """Per-utterance features. Pitch fields are 0 when no frame is voiced, levels are FLOOR_DBFS with no speech."""

    duration_s: float
    speech_s: float  # first to last speech frame, less pauses of 300 ms or more
    voiced_fraction: float  # voiced frames / speech frames
    mean_f0_hz: float
    f0_p10_hz: float
    f0_p90_hz: float
    f0_range_st: float  # p10-p90 in semitones
    mean_dbfs: float  # RMS level over speech frames
    peak_dbfs: float  # loudest 40 ms frame
    dynamic_range_db: float  # p10-p90 of speech-frame levels
    syllables: int
    syllables_per_s: float
    arousal: float  # 0..1, see arousal()
    label: Label


def analyse_pcm(pcm: bytes) -> Prosody:
    """Features of 16 kHz mono PCM16 (little-endian) speech."""
    return analyse(np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0)


def analyse(x: Samples) -> Prosody:
    """Features of 16 kHz mono float speech, full scale 1.0."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    n = max(1, len(x) // WIDE_HOP)  # whole 10 ms hops; a shorter input is one zero-padded frame
    wide = _frames(x, n, WIDE_HOP, WIDE_WINDOW)
    power = np.einsum("ij,ij->i", wide, wide) / WIDE_WINDOW
    level = 10.0 * np.log10(np.maximum(power, 10.0 ** (FLOOR_DBFS / 10.0)))
    speech = level >= max(SPEECH_FLOOR_DBFS, float(level.max()) - SPEECH_RANGE_DB)
    frames = _frames(soxr.resample(x, SAMPLE_RATE, RATE), n, HOP, WINDOW)
    spec = np.fft.rfft(frames)
    f0 = _despike(np.where(speech, _yin(frames, spec), 0.0))
    return _features(len(x), level, speech, f0, _band_db(spec))


def arousal(mean_f0_hz: float, f0_range_st: float, mean_dbfs: float, syllables_per_s: float) -> float:
    """Heuristic arousal in 0..1: a weighted sum of four cues, each mapped linearly onto 0..1 and clipped.

    0.20 * pitch level (100 Hz -> 0, 225 Hz -> 1; speaker-dependent: it does not know the caller's baseline)
    + 0.25 * pitch range (2 -> 0, 12 semitones -> 1)
    + 0.30 * loudness (-35 -> 0, -10 dBFS -> 1; assumes a telephone level near -20 dBFS for normal speech)
    + 0.25 * speaking rate (2.5 -> 0, 6.5 syllables/s -> 1).
    Not trained on labelled emotion data; use it to compare utterances of one call, not as a classifier.
    """
    level = _ramp(12.0 * np.log2(mean_f0_hz / 100.0), 0.0, 14.0) if mean_f0_hz > 0 else 0.0
    return float(
        0.20 * level
        + 0.25 * _ramp(f0_range_st, 2.0, 12.0)
        + 0.30 * _ramp(mean_dbfs, -35.0, -10.0)
        + 0.25 * _ramp(syllables_per_s, 2.5, 6.5)
    )


def label(score: float) -> Label:
    """Coarse band of an arousal score."""
    return "calm" if score < CALM_BELOW else "aroused" if score > AROUSED_ABOVE else "neutral"


def _ramp(v: float, lo: float, hi: float) -> float:
    return float(np.clip((v - lo) / (hi - lo), 0.0, 1.0))


def _frames(x: npt.NDArray[np.float32], n: int, hop: int, window: int) -> npt.NDArray[np.float32]:
    """n frames of `window` samples every `hop`, zero-padded at the end."""
    padded = np.zeros(max(len(x), n * hop) + window, np.float32)
    padded[: len(x)] = x
    return np.lib.stride_tricks.sliding_window_view(padded, window)[: n * hop : hop]


def _yin(frames: npt.NDArray[np.float32], spec: npt.NDArray[np.complexfloating]) -> npt.NDArray[np.float64]:
    """F0 per frame in Hz (0 when unvoiced): YIN's cumulative-mean-normalised difference, correlation by FFT."""
    head = np.fft.rfft(frames[:, :YIN_WINDOW], WINDOW)
    corr = np.fft.irfft(np.conj(head) * spec, WINDOW)[:, : TAU_MAX + 1]  # no wrap: YIN_WINDOW + TAU_MAX = WINDOW
    energy = np.concatenate([np.zeros((len(frames), 1), np.float32), np.cumsum(frames * frames, axis=1)], axis=1)
    shifted = energy[:, YIN_WINDOW : YIN_WINDOW + TAU_MAX + 1] - energy[:, : TAU_MAX + 1]
    diff = np.maximum(shifted[:, :1] + shifted - 2.0 * corr, 0.0)
    taus = np.arange(1, TAU_MAX + 1)
    cmnd = (diff[:, 1:] * taus / np.maximum(np.cumsum(diff[:, 1:], axis=1), 1e-12))[:, TAU_MIN - 1 :]
    below = cmnd < YIN_THRESHOLD
    started = np.cumsum(below, axis=1) > 0
    first_dip = started & ~(np.cumsum(started & ~below, axis=1) > 0)
    best = np.argmin(np.where(first_dip, cmnd, np.inf), axis=1)
    rows = np.arange(len(frames))
    left = cmnd[rows, np.maximum(best - 1, 0)]
    mid = cmnd[rows, best]
    right = cmnd[rows, np.minimum(best + 1, cmnd.shape[1] - 1)]
    curve = left - 2.0 * mid + right
    shift = np.where(curve > 0, 0.5 * (left - right) / np.where(curve > 0, curve, 1.0), 0.0)
    tau = TAU_MIN + best + np.clip(shift, -0.5, 0.5)
    return np.where(below.any(axis=1), RATE / tau, 0.0)


def _despike(f0: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Median of each voiced frame's voiced neighbours within 20 ms: drops single-frame octave jumps."""
    voiced = f0 > 0
    near = np.lib.stride_tricks.sliding_window_view(np.pad(np.where(voiced, f0, np.nan), 2, constant_values=np.nan), 5)
    out = np.zeros_like(f0)
    out[voiced] = np.nanmedian(near[voiced], axis=1)
    return out


def _band_db(spec: npt.NDArray[np.complexfloating]) -> npt.NDArray[np.float64]:
    """300-3000 Hz energy per frame in dB, Hann-windowed, smoothed over three frames.

    The Hann window is applied on the frames' spectrum: it is the kernel (-1/4, 1/2, -1/4) across bins.
    """
    freqs = np.fft.rfftfreq(WINDOW, 1.0 / RATE)
    k = np.nonzero((freqs >= BAND_HZ[0]) & (freqs <= BAND_HZ[1]))[0]
    hann = 0.5 * spec[:, k] - 0.25 * (spec[:, k - 1] + spec[:, k + 1])
    db = 10.0 * np.log10(
        np.einsum("ij,ij->i", hann.real, hann.real) + np.einsum("ij,ij->i", hann.imag, hann.imag) + 1e-12
    )
    return np.convolve(np.pad(db, 1, mode="edge"), np.ones(3) / 3.0, mode="valid")


def _nuclei(env: npt.NDArray[np.float64], eligible: npt.NDArray[np.bool_]) -> int:
    """Count envelope peaks at eligible frames, prominent enough and spaced apart (highest kept first)."""
    inner = env[1:-1]
    peaks = np.nonzero((inner > env[:-2]) & (inner >= env[2:]) & eligible[1:-1])[0] + 1
    kept: list[int] = []
    for p in sorted(peaks, key=lambda i: -env[i]):
        if any(abs(p - k) < NUCLEUS_SPACING for k in kept):
            continue
        higher = np.nonzero(env > env[p])[0]
        lo = higher[higher < p].max(initial=-1) + 1
        hi = higher[higher > p].min(initial=len(env))
        base = max(env[lo : p + 1].min(), env[p:hi].min())
        if env[p] - base >= NUCLEUS_PROMINENCE_DB:
            kept.append(int(p))
    return len(kept)


def _speech_seconds(speech: npt.NDArray[np.bool_]) -> float:
    """Time from the first to the last speech frame, less silent runs of PAUSE_FRAMES or more."""
    idx = np.nonzero(speech)[0]
    if idx.size == 0:
        return 0.0
    gaps = np.diff(idx) - 1
    return float(idx[-1] - idx[0] + 1 - gaps[gaps >= PAUSE_FRAMES].sum()) * HOP_MS / 1000


def _features(
    samples: int,
    level: npt.NDArray[np.float64],
    speech: npt.NDArray[np.bool_],
    f0: npt.NDArray[np.float64],
    band: npt.NDArray[np.float64],
) -> Prosody:
    voiced = f0 > 0
    pitched = f0[voiced]
    if pitched.size:
        p10, p90 = (float(v) for v in np.percentile(pitched, [10, 90]))
        mean_f0, range_st = float(pitched.mean()), 12.0 * float(np.log2(p90 / p10))
    else:
        p10 = p90 = mean_f0 = range_st = 0.0
    spoken = level[speech]
    if spoken.size:
        mean_db = 10.0 * float(np.log10(np.mean(10.0 ** (spoken / 10.0))))
        lo_db, hi_db = (float(v) for v in np.percentile(spoken, [10, 90]))
        peak_db = float(spoken.max())
    else:
        mean_db = peak_db = FLOOR_DBFS
        lo_db = hi_db = 0.0
    near_voiced = np.convolve(voiced, np.ones(5))[2:-2] > 0  # within 20 ms of a voiced frame
    syllables = _nuclei(band, speech & near_voiced)
    speech_s = _speech_seconds(speech)
    rate = syllables / max(speech_s, MIN_SPEECH_S) if syllables else 0.0
    score = arousal(mean_f0, range_st, mean_db, rate)
    return Prosody(
        duration_s=samples / SAMPLE_RATE,
        speech_s=speech_s,
        voiced_fraction=float(voiced.sum() / spoken.size) if spoken.size else 0.0,
        mean_f0_hz=mean_f0,
        f0_p10_hz=p10,
        f0_p90_hz=p90,
        f0_range_st=range_st,
        mean_dbfs=mean_db,
        peak_dbfs=peak_db,
        dynamic_range_db=hi_db - lo_db,
        syllables=syllables,
        syllables_per_s=rate,
        arousal=score,
        label=label(score),
    )
