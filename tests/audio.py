"""Speech for the tests, rendered by the packaged engines (piper's joe voice, espeak-ng) and cached per run."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np

from agents.speech.tts import PiperTts, engine_for, synthesize_fixed
from media.frames import SAMPLE_RATE
from media.resample import resample
from media.wavfile import read_wav_16k
from telephony.simulator.measure import onset_index, telephone_band

__all__ = ["onset_index", "telephone_band"]

AGENT_PROMPT = (
    "Thank you for calling. This is a long message, so that you can try interrupting me while I am speaking. "
    "Voicegate listens all the time, and when you start talking it stops at once."
)
CALLER_SENTENCE = "Sorry to interrupt, but I need help with my bill."
BACKCHANNELS = ("uh-huh", "yeah", "okay")


def to_array(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32)


def to_pcm(x: np.ndarray) -> bytes:
    return bytes(np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes())


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2) / 32768.0**2 + 1e-12))


def scale_to_db(x: np.ndarray, target_db: float) -> np.ndarray:
    return x * 10 ** ((target_db - rms_db(x)) / 20)


def trim(x: np.ndarray, rel_db: float = -35.0) -> np.ndarray:
    """Cut leading and trailing silence (frames quieter than rel_db below the peak frame)."""
    f = x[: len(x) // 320 * 320].reshape(-1, 320)
    e = 10 * np.log10((f.astype(np.float64) ** 2).mean(axis=1) + 1e-9)
    keep = np.nonzero(e > e.max() + rel_db)[0]
    return f[keep[0] : keep[-1] + 1].reshape(-1)


def piper(text: str) -> np.ndarray:
    pcm, rate = synthesize_fixed("joe", text)
    return to_array(resample(pcm, rate))


def piper_steady(text: str) -> np.ndarray:
    """piper's speech without its random noise (`noise_scale` and `noise_w_scale` 0), the same on every run: piper's
    usual output differs per run (4 of 60 renderings of the agent's prompt once made the detector miss the unit tests'
    caller over echo, tests/data/agent-prompt-over-echo.pcm). The unit tests' clips pin behaviour on one."""
    from piper import SynthesisConfig

    engine = engine_for("joe")
    assert isinstance(engine, PiperTts)
    pcm, rate = engine.synthesize(text, SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0))
    return to_array(resample(pcm, rate))


def espeak(text: str, voice: str = "en-us", speed: int = 175, pitch: int = 50, amplitude: int = 100) -> np.ndarray:
    """espeak-ng speech at 16 kHz; `speed` words a minute, `pitch` 0-99 and `amplitude` 0-200 (its defaults 50, 100)."""
    out = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude),
                          "--stdout", text], capture_output=True, check=True).stdout
    import io

    with wave.open(io.BytesIO(out)) as w:
        pcm, rate = w.readframes(w.getnframes()), w.getframerate()
    return to_array(resample(pcm, rate))


def write_wav(path: Path, x: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_pcm(x))
    return path


def read_wav(path: Path) -> np.ndarray:
    return to_array(read_wav_16k(path))


def correlation(sent: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """The lag (s) at which `sent` best lines up with `got` (negative: `got` starts inside `sent`) and the normalised
    correlation of their overlap there (1.0: a copy); 16 kHz arrays, by FFT."""
    n = len(sent) + len(got)
    c = np.fft.irfft(np.fft.rfft(got, n) * np.conj(np.fft.rfft(sent, n)), n)
    k = int(np.argmax(c))
    lag = k if k < len(got) else k - n
    a, b = (sent, got[lag:]) if lag >= 0 else (sent[-lag:], got)
    m = min(len(a), len(b))
    a, b = a[:m], b[:m]
    return lag / 16000, float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b) + 1e-9))


def piecewise_correlation(sent: np.ndarray, got: np.ndarray, piece_s: float = 0.5) -> float:
    """The median `correlation` of the voiced `piece_s` pieces of `sent`, each at its own lag in `got`: a jitter
    buffer that drops or inserts a frame mid-utterance shifts the rest of the audio, which lowers one whole-clip
    correlation but not the pieces'. 16 kHz arrays."""
    n = int(piece_s * 16000)
    pieces = [sent[i : i + n] for i in range(0, len(sent) - n + 1, n)]
    loud = max(float(np.sqrt(np.mean(p**2))) for p in pieces)
    voiced = [p for p in pieces if np.sqrt(np.mean(p**2)) > loud / 10]
    return float(np.median([correlation(p, got)[1] for p in voiced]))
