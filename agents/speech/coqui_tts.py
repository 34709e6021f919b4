"""`CoquiTts`: a coqui-tts voice (VITS, Glow-TTS, Tacotron, XTTS...) loaded through coqui's own `TTS.api.TTS`.

A config names it as a mapping, `voice: {engine: coqui, model_path: ..., config_path: ..., speaker: ...}`, which
`coqui_voice` turns into a voice name (`coqui:` and the mapping as JSON) so the prompt caches, the turn records and
`engine_for` handle it like `joe` or an espeak-ng voice. torch and coqui are imported on first load, so a gateway
that configures no coqui voice never loads them.

A multilingual model (XTTS, YourTTS, a VITS with a language embedding) speaks each line in a language: the mapping's
`language` for lines said before the caller's language is known, and the caller's (`with_language`, from the
cascade) after. A language the model lacks is refused when the voice loads. One loaded model serves every language
and speaker of it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from agents.speech.tts import TtsError

PREFIX = "coqui:"
_KEYS = ("engine", "model_path", "config_path", "speaker", "language")


@dataclass(frozen=True)
class CoquiVoice:
    model_path: str
    """A checkpoint file (`model.pth`) or, for XTTS, the model's directory."""
    config_path: str
    speaker: str | None = None
    language: str | None = None
    """For a multilingual model, the language it speaks (ignored by a model of one language)."""


def is_coqui_voice(voice: str) -> bool:
    return voice.startswith(PREFIX)


def coqui_voice(spec: Mapping[str, Any]) -> str:
    """The voice name of a config mapping; ValueError naming the key at fault. `config_path` defaults to the
    `config.json` in the model's directory (beside a checkpoint file), where coqui's released models keep it."""
    if unknown := [k for k in spec if k not in _KEYS]:
        raise ValueError(f"unknown key {unknown[0]!r} in a voice mapping (keys: {', '.join(_KEYS)})")
    if spec.get("engine") != "coqui":
        raise ValueError(f"a voice mapping needs engine: coqui (got {spec.get('engine')!r}); other engines take a "
                         "voice name (`joe`, a piper .onnx file, an espeak-ng voice)")
    for key in ("model_path", "config_path", "speaker", "language"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise ValueError(f"coqui voice: {key} must be a string")
    model = spec.get("model_path")
    if not model:
        raise ValueError("coqui voice: model_path is required (a checkpoint file, or XTTS's model directory)")
    path = Path(model).expanduser()
    config = spec.get("config_path") or str((path if path.is_dir() else path.parent) / "config.json")
    voice = {"model_path": str(path), "config_path": str(Path(config).expanduser()), "speaker": spec.get("speaker")}
    if spec.get("language") is not None:
        voice["language"] = spec["language"]
    return PREFIX + json.dumps(voice, sort_keys=True)


def parse_coqui_voice(voice: str) -> CoquiVoice:
    try:
        fields = json.loads(voice[len(PREFIX):])
        return CoquiVoice(fields["model_path"], fields["config_path"], fields.get("speaker"), fields.get("language"))
    except (ValueError, KeyError, TypeError) as e:
        raise TtsError(f"not a coqui voice name: {voice!r} (write the voice as a mapping with engine: coqui)") from e


def with_language(voice: str, language: str) -> str:
    """A coqui voice's name speaking `language`; any other voice's name unchanged."""
    if not is_coqui_voice(voice):
        return voice
    fields = json.loads(voice[len(PREFIX):])
    return PREFIX + json.dumps({**fields, "language": language}, sort_keys=True)


def model_language(language: str, languages: list[str]) -> str | None:
    """The model's name for `language` (an ASR's code such as `fr`): itself, or the one name of that language with
    a region (YourTTS says `fr-fr`); None if the model has no such language."""
    if language in languages:
        return language
    regional = [name for name in languages if name.split("-")[0] == language]
    return regional[0] if len(regional) == 1 else None


def check_files(voice: CoquiVoice) -> None:
    """TtsError unless the model and its config are there (without loading coqui)."""
    where = f"coqui model {voice.model_path}"
    if not Path(voice.model_path).exists():
        raise TtsError(f"{where}: checkpoint {voice.model_path} does not exist")
    if not Path(voice.config_path).is_file():
        raise TtsError(f"{where}: config file {voice.config_path} does not exist")


_models: dict[tuple[str, str], tuple[Any, threading.Lock]] = {}
"""Loaded models by (model_path, config_path), each with its lock: coqui's Synthesizer is not thread-safe."""
_models_lock = threading.Lock()


class CoquiTts:
    """Speaks with a coqui model through `TTS.api.TTS(model_path=..., config_path=...)`, one sentence at a time."""

    def __init__(self, model_path: str, config_path: str, speaker: str | None = None, language: str | None = None
                 ) -> None:
        self.model_path = model_path
        self.config_path = config_path
        self.speaker = speaker
        self.language = language
        self._tts: Any = None
        self._language: str | None = None
        """The model's name for `language`; None for a model of one language."""
        self._run_lock = threading.Lock()

    @classmethod
    def from_voice(cls, voice: str) -> CoquiTts:
        v = parse_coqui_voice(voice)
        return cls(v.model_path, v.config_path, v.speaker, v.language)

    @property
    def identity(self) -> str:
        stamps = " ".join(f"{p}:{st.st_size}:{st.st_mtime_ns}"
                          for p in (self.model_path, self.config_path) for st in [Path(p).stat()])
        return f"coqui-tts {version('coqui-tts')} {stamps} speaker={self.speaker} language={self.language}"

    def load(self) -> Any:
        """Load the model once (TtsError naming it if it does not load, or if it lacks the speaker or language);
        later calls return it."""
        if self._tts is None:
            with _models_lock:
                key = (self.model_path, self.config_path)
                if key not in _models:
                    _models[key] = (self._open(), threading.Lock())
                tts, self._run_lock = _models[key]
            self._check(tts)
            self._tts = tts
        return self._tts

    def _check(self, tts: Any) -> None:
        where = f"coqui model {self.model_path}"
        speakers: list[str] = list(tts.speakers or [])
        if self.speaker is None and speakers:
            raise TtsError(f"{where} has several speakers; choose one of {speakers}")
        if self.speaker is not None and self.speaker not in speakers:
            has = f"its speakers are {speakers}" if speakers else "it has a single speaker"
            raise TtsError(f"{where} has no speaker {self.speaker!r}: {has}")
        if not tts.is_multi_lingual:
            return
        languages: list[str] = list(tts.languages or [])
        if self.language is None:
            raise TtsError(f"{where} is multilingual (its languages are {languages}): add `language:` (one of them) "
                           "to its voice mapping, for lines said before the caller's language is known")
        self._language = model_language(self.language, languages)
        if self._language is None:
            raise TtsError(f"{where} has no language {self.language!r}: its languages are {languages}")

    def _open(self) -> Any:
        where = f"coqui model {self.model_path}"
        check_files(CoquiVoice(self.model_path, self.config_path, self.speaker))
        try:
            from TTS.api import TTS
        except ImportError as e:  # also raised by coqui itself when torch or torchaudio is missing
            raise TtsError(f"{where}: coqui-tts is not installed (pip install coqui-tts): {e}") from e
        except OSError as e:  # a torch or torchaudio library that does not load beside the installed torch
            raise TtsError(f"{where}: coqui-tts does not import (the Makefile's deps target installs a working "
                           f"set): {e}") from e
        try:
            tts = TTS(model_path=self.model_path, config_path=self.config_path, progress_bar=False)
        except Exception as e:
            reason = " ".join(str(e).split())  # one line: torch's unpickling errors span several
            raise TtsError(f"{where}: cannot load it with config {self.config_path}: {type(e).__name__}: {reason}"
                           ) from e
        return tts

    @property
    def sample_rate(self) -> int:
        """The model's output rate, from its config (loads the model)."""
        return int(self.load().synthesizer.output_sample_rate)

    def synthesize(self, text: str) -> tuple[bytes, int]:
        tts = self.load()
        rate = int(tts.synthesizer.output_sample_rate)
        if not text.strip():
            return b"", rate
        try:
            with self._run_lock:
                wav = tts.tts(text, speaker=self.speaker, language=self._language, split_sentences=False)
        except Exception as e:
            raise TtsError(f"coqui model {self.model_path} failed on {text[:40]!r}: {type(e).__name__}: {e}") from e
        x = np.asarray(wav, dtype=np.float32)
        voiced = np.flatnonzero(x)  # coqui pads every sentence with silence: keep none after the last one
        x = x[: voiced[-1] + 1] if voiced.size else x[:0]
        return np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2").tobytes(), rate
