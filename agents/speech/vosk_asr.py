"""Kaldi ASR through Vosk, for languages with a Vosk model (the path and language come from the config).

Each pass feeds the whole utterance as 16-bit PCM to a fresh `KaldiRecognizer` with word output on; the model is
loaded once and shared. Vosk does not identify languages: every transcript is in the configured one, as one
segment. Confidence is the mean of Kaldi's word confidences (lattice posteriors), 0 when no word was recognised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from agents.speech.asr import SAMPLE_RATE, AsrError, Audio, Segment, Transcript, Word


class VoskAsr:
    name = "vosk"

    def __init__(self, model_path: str, language: str) -> None:
        import vosk

        vosk.SetLogLevel(-1)
        if not Path(model_path).is_dir():
            raise AsrError(f"vosk: cannot load model {model_path}: not a directory")
        try:
            self._model: Any = vosk.Model(model_path)
        except Exception as e:  # a bare Exception; Kaldi prints its reason on stderr
            raise AsrError(f"vosk: cannot load model {model_path}: {e} (Kaldi's reason is on stderr)") from e
        self._recognizer = vosk.KaldiRecognizer
        self.language = language

    def transcribe(self, audio: Audio, final: bool, hint: Transcript | None = None) -> Transcript:
        audio_s = len(audio) / SAMPLE_RATE
        rec = self._recognizer(self._model, SAMPLE_RATE)
        rec.SetWords(True)
        rec.AcceptWaveform((np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes())
        result = json.loads(rec.FinalResult())
        words = tuple(Word(w["word"], float(w["start"]), float(w["end"]), float(w["conf"]))
                      for w in result.get("result", []))
        text = str(result.get("text", "")).strip()
        if not text:
            return Transcript("", self.language, 0.0, final, audio_s)
        confidence = float(np.mean([w.confidence for w in words])) if words else 1.0
        start, end = (words[0].start_s, words[-1].end_s) if words else (0.0, audio_s)
        segment = Segment(text, self.language, start, end)
        return Transcript(text, self.language, round(confidence, 3), final, audio_s, words, (segment,))
