"""`CoquiTts`: a coqui-tts voice loaded from a checkpoint and its config.json, both paths from the config.

torch and coqui are imported on first use, so a gateway that configures no coqui voice never loads them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from agents.speech.tts import TtsError


class CoquiTts:
    """Speaks with a coqui model (VITS, Glow-TTS, Tacotron…) through coqui's own loader, `TTS.api.TTS`."""

    def __init__(self, model_path: str, config_path: str, speaker: str | None = None) -> None:
        self.model_path = model_path
        self.config_path = config_path
        self.speaker = speaker
        self._tts: Any = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one synthesis at a time: coqui's Synthesizer is not thread-safe

    def _load(self) -> Any:
        with self._load_lock:
            if self._tts is None:
                self._tts = self._open()
            return self._tts

    def _open(self) -> Any:
        where = f"coqui model {self.model_path}"
        for what, path in (("checkpoint", self.model_path), ("config", self.config_path)):
            if not Path(path).is_file():
                raise TtsError(f"{where}: {what} file {path} does not exist")
        try:
            from TTS.api import TTS
        except ImportError as e:  # also raised by coqui itself when torch or torchaudio is missing
            raise TtsError(f"{where}: coqui-tts is not installed (pip install coqui-tts): {e}") from e
        try:
            tts = TTS(model_path=self.model_path, config_path=self.config_path, progress_bar=False)
        except Exception as e:
            raise TtsError(f"{where}: cannot load it with config {self.config_path}: {type(e).__name__}: {e}") from e
        speakers: list[str] = list(tts.speakers or [])
        if self.speaker is None and speakers:
            raise TtsError(f"{where} has several speakers; choose one of {speakers}")
        if self.speaker is not None and self.speaker not in speakers:
            has = f"its speakers are {speakers}" if speakers else "it has a single speaker"
            raise TtsError(f"{where} has no speaker {self.speaker!r}: {has}")
        return tts

    @property
    def sample_rate(self) -> int:
        """The model's output rate, from its config (loads the model)."""
        return int(self._load().synthesizer.output_sample_rate)

    def synthesize(self, text: str) -> tuple[bytes, int]:
        tts = self._load()
        rate = int(tts.synthesizer.output_sample_rate)
        if not text.strip():
            return b"", rate
        try:
            with self._run_lock:
                wav = tts.tts(text, speaker=self.speaker)
        except Exception as e:
            raise TtsError(f"coqui model {self.model_path} failed on {text[:40]!r}: {type(e).__name__}: {e}") from e
        x = np.asarray(wav, dtype=np.float32)
        voiced = np.flatnonzero(x)  # coqui pads every sentence with silence: keep none after the last one
        x = x[: voiced[-1] + 1] if voiced.size else x[:0]
        return np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2").tobytes(), rate
