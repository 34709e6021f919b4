"""Speech recognition: the interface every engine implements, and the transcript it returns.

Engines take a whole utterance (16 kHz mono float32 in [-1, 1]) and return a `Transcript`. Streaming comes from the
caller: `agents.listener` re-runs the engine on the growing utterance while the caller speaks and passes
the previous result as `hint`, which an engine may use to skip work it already did (moonshine verifies the hinted
tokens in one decoder pass). Engines are CPU-heavy and run in a worker process (`agents.speech.worker`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16000

Audio = npt.NDArray[np.float32]


def cache_dir() -> Path:
    """Where converted or joined models are kept (`$VOICEGATE_CACHE`, default ~/.cache/voicegate)."""
    return Path(os.environ.get("VOICEGATE_CACHE", Path.home() / ".cache" / "voicegate"))


class AsrError(Exception):
    """An ASR engine could not load or run; the message names the engine and the model path."""


@dataclass(frozen=True)
class Word:
    text: str
    start_s: float
    end_s: float
    confidence: float = 1.0


@dataclass(frozen=True)
class Segment:
    """A stretch of the utterance in one language (code-switched speech has several)."""

    text: str
    language: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    """ISO 639-1 code of the utterance's main language (`en`, `hi`, ...)."""
    confidence: float
    """0..1; engines without a score report 1.0."""
    final: bool
    audio_s: float
    """Length of the audio this transcript covers."""
    words: tuple[Word, ...] = ()
    segments: tuple[Segment, ...] = ()
    tokens: tuple[int, ...] = ()
    """Engine-specific decoder tokens, handed back as a hint on the next pass over the same utterance."""


class AsrEngine(Protocol):
    name: str

    def transcribe(self, audio: Audio, final: bool, hint: Transcript | None = None) -> Transcript:
        """Transcribe `audio` (16 kHz mono float32); `hint` is this engine's result for a prefix of it."""
        ...


def pcm16_to_float(pcm: bytes) -> Audio:
    return (np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0).astype(np.float32)
