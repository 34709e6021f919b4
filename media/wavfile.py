"""WAV files as 16 kHz PCM16 mono, the frame rate."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from media.resample import resample


class WavError(Exception):
    """A WAV file that cannot be read or is not 16-bit PCM of the channels allowed; names the file."""


def read_wav_16k(path: str | Path, allow_stereo: bool = False) -> bytes:
    """The file's audio resampled to 16 kHz; of a stereo file (when allowed), the left channel."""
    try:
        with wave.open(str(path)) as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            pcm = w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as e:
        raise WavError(f"cannot read {path}: {e}") from None
    if width != 2 or channels not in ((1, 2) if allow_stereo else (1,)):
        wanted = "mono or stereo" if allow_stereo else "mono"
        raise WavError(f"{path}: must be 16-bit {wanted} PCM, not {8 * width}-bit with {channels} channels")
    if channels == 2:
        pcm = np.frombuffer(pcm, dtype="<i2")[::2].tobytes()
    return resample(pcm, rate)
