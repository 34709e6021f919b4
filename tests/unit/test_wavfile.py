"""WAV files read as 16 kHz mono PCM16, and the errors that name the file."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from media.wavfile import WavError, read_wav_16k


def _write(path: Path, samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.astype(f"<i{width}").tobytes())
    return path


def test_mono_is_resampled_to_16k(tmp_path: Path):
    pcm = read_wav_16k(_write(tmp_path / "a.wav", np.full(8000, 1000), 8000))
    assert len(pcm) == 2 * 16000


def test_stereo_keeps_the_left_channel_when_allowed(tmp_path: Path):
    lr = np.column_stack([np.full(1600, 1000), np.full(1600, -1000)]).reshape(-1)
    path = _write(tmp_path / "s.wav", lr, 16000, channels=2)
    assert np.all(np.frombuffer(read_wav_16k(path, allow_stereo=True), dtype="<i2") == 1000)
    with pytest.raises(WavError, match=r"s\.wav: must be 16-bit mono PCM, not 16-bit with 2 channels"):
        read_wav_16k(path)


def test_unsupported_or_missing_files_are_named(tmp_path: Path):
    with pytest.raises(WavError, match=r"w\.wav: must be 16-bit mono PCM, not 32-bit"):
        read_wav_16k(_write(tmp_path / "w.wav", np.zeros(160), 16000, width=4))
    with pytest.raises(WavError, match=r"cannot read .*missing\.wav"):
        read_wav_16k(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav at all")
    with pytest.raises(WavError, match=r"cannot read .*junk\.wav"):
        read_wav_16k(tmp_path / "junk.wav")
