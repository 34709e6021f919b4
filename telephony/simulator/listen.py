"""The simulated caller's ear: the embedded ASR transcribes what the caller heard, on a background thread.

Each engine is loaded once per process, before the first call whose script has an `expect_speech` step. onnxruntime
releases the GIL while it computes, so the phone's media clock keeps its timing during a transcription.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

from agents.speech.asr import pcm16_to_float
from agents.speech.moonshine_asr import MoonshineAsr
from telephony.simulator.runner import Heard

PAD_FRAMES = 10
"""Received frames kept either side of an utterance (200 ms), so soft onsets and endings reach the ASR."""


class Ear:
    """One ASR engine and the thread that runs it."""

    def __init__(self, engine: str) -> None:
        if engine != "moonshine":
            raise ValueError(f"unknown ASR engine {engine!r}")
        self.engine = engine
        self._asr = MoonshineAsr(threads=1)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"ear-{engine}")

    def load(self) -> None:
        """Load the model now (seconds), so that it does not happen during a call; raises AsrError."""
        self._asr.load()

    def submit(self, pcm: bytes) -> Future[Heard]:
        """Transcribe 16 kHz PCM16 audio; the future never raises (`Heard.error` instead)."""
        return self._pool.submit(self._transcribe, pcm)

    def _transcribe(self, pcm: bytes) -> Heard:
        t0 = time.perf_counter()
        try:
            t = self._asr.transcribe(pcm16_to_float(pcm), final=True)
        except Exception as e:
            return Heard("", 0.0, error=f"{self.engine}: {e!r}")
        return Heard(t.text, t.confidence, round((time.perf_counter() - t0) * 1000, 1))


_EARS: dict[str, Ear] = {}


def ear_for(engine: str) -> Ear:
    """This process's loaded Ear for `engine`."""
    if engine not in _EARS:
        ear = Ear(engine)
        ear.load()
        _EARS[engine] = ear
    return _EARS[engine]
