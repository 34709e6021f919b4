"""`python -m bench.cascaded hindi`: whisper-base's Hindi in Hindi-English turns, per decoding setting.

Each turn is one of `TURNS`: espeak-ng's Hindi voice saying the Hindi sentence, 0.2 s of silence, piper saying the
English one (the Hindi-English test's shape), through G.711 (a mu-law round trip at 8 kHz) and back to 16 kHz. The
engine (`WhisperAsr`, languages `hi,en`) transcribes each turn once (final); its `hi` segments are scored against the
Hindi sentence by character error rate (CER, after NFC and without punctuation: Urdu's Perso-Arabic script, which
whisper-base often writes for Hindi, counts as all wrong), its `en` segments against the English one by WER. RTF is
the process's CPU time over the audio's length (the engine on one thread). Prints a table and writes
bench/results/hindi.json.
"""

from __future__ import annotations

import json
import os
import time
import unicodedata
from typing import Any

import numpy as np

from agents.speech.asr import Audio, pcm16_to_float
from agents.speech.whisper_asr import WhisperAsr
from agents.speech.whisper_model import whisper_base_dir
from tests import audio
from tests.integration.peers import ROOT
from tests.prompts import edit_distance, g711_round_trip, wer

RESULTS = ROOT / "bench" / "results"
TURNS = (
    ("नमस्ते, मेरा नाम राहुल है", "I would like to book a room."),
    ("मुझे कल सुबह दिल्ली जाना है", "Can you call me back tomorrow?"),
    ("मेरा कमरा नंबर दो सौ पाँच है", "The train leaves at seven."),
    ("क्या आप मेरी मदद कर सकते हैं", "Please send me the invoice."),
    ("आज मौसम बहुत अच्छा है", "My booking code is in the email."),
    ("मुझे एक टैक्सी चाहिए", "Is breakfast included?"),
    ("नाश्ता कितने बजे मिलता है", "I need a taxi to the airport."),
    ("मेरा फ़ोन काम नहीं कर रहा है", "The internet is not working."),
    ("कृपया मुझे बिल भेज दीजिए", "Thank you for your help."),
    ("हम तीन लोग हैं और दो रात रुकेंगे", "We will arrive late tonight."),
    ("होटल का पता क्या है", "How much does it cost?"),
    ("धन्यवाद, आपका दिन शुभ हो", "See you next week."),
)
BEFORE: dict[str, Any] = {"beam_size": 1, "beam_sizes": None, "prompts": None, "temperatures": (0.0,),
                          "vad_filter": False}
"""The engine's settings before this bench."""
SETTINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("before: greedy, language per chunk (hi or en)", BEFORE),
    ("languages unrestricted (Whisper's top pick)", {**BEFORE, "languages": None}),
    ("beam 5", {**BEFORE, "beam_size": 5}),
    ("Devanagari prompt for hi chunks", {**BEFORE, "prompts": {"hi": "नमस्ते।"}}),
    ("temperature fallback 0.2-1.0", {**BEFORE, "temperatures": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)}),
    ("silero VAD filter", {**BEFORE, "vad_filter": True}),
    ("prompt + beam 5", {**BEFORE, "prompts": {"hi": "नमस्ते।"}, "beam_size": 5}),
    ("prompt + temperature fallback", {**BEFORE, "prompts": {"hi": "नमस्ते।"},
                                       "temperatures": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)}),
    ("prompt + beam 5 + temperature fallback", {**BEFORE, "prompts": {"hi": "नमस्ते।"}, "beam_size": 5,
                                                "temperatures": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)}),
    ("prompt + beam 5 + silero VAD filter", {**BEFORE, "prompts": {"hi": "नमस्ते।"}, "beam_size": 5,
                                            "vad_filter": True}),
    ("kept, the engine's defaults: prompt + beam 5 for hi chunks, en greedy", {}),
)


def normalise(text: str) -> str:
    """NFC, no punctuation or symbols (Latin, Devanagari's danda, Urdu's), one space between words; vowel signs and
    the virama (combining marks) stay."""
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in unicodedata.normalize("NFC", text))
    return " ".join(text.split())


def char_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(character edits from `hyp` to `ref`, characters of `ref`), both normalised."""
    r, h = normalise(ref), normalise(hyp)
    return edit_distance(list(r), list(h)), len(r)


def devanagari_share(text: str) -> float:
    letters = [c for c in text if c.isalpha() or unicodedata.category(c).startswith("M")]
    return sum("\u0900" <= c <= "\u097f" for c in letters) / len(letters) if letters else 0.0


def _g711(x: np.ndarray) -> Audio:
    return pcm16_to_float(g711_round_trip(audio.to_pcm(x), 16000))


def turns() -> list[Audio]:
    """The clips; piper samples noise, so its renderings come from the TTS disk cache (the same every run)."""
    pause = np.zeros(int(0.2 * 16000), np.float32)
    return [_g711(np.concatenate([audio.espeak(hi, voice="hi"), pause, audio.piper(en)])) for hi, en in TURNS]


def measure(name: str, settings: dict[str, Any], clips: list[Audio]) -> dict[str, Any]:
    import ctranslate2

    ctranslate2.set_random_seed(0)  # the temperature fallback samples
    kw = {"languages": ("hi", "en"), **settings}
    engine = WhisperAsr(str(whisper_base_dir()), **kw)
    errors = chars = 0
    hindi, english, shares, split = [], [], [], 0
    cpu = 0.0
    for clip, (hi_ref, _) in zip(clips, TURNS, strict=True):
        t0 = time.process_time()
        tr = engine.transcribe(clip, True)
        cpu += time.process_time() - t0
        hi = " ".join(s.text for s in tr.segments if s.language == "hi")
        en = " ".join(s.text for s in tr.segments if s.language == "en")
        split += bool(hi) and bool(en)
        e, n = char_errors(hi_ref, hi)
        errors, chars = errors + e, chars + n
        hindi.append(hi)
        english.append(en)
        shares.append(devanagari_share(hi))
    audio_s = sum(len(c) for c in clips) / 16000
    row = {"setting": name, "options": kw, "hindi_cer": round(errors / chars, 3),
           "english_wer": round(wer([en for _, en in TURNS], english), 3), "rtf": round(cpu / audio_s, 3),
           "devanagari_share": round(float(np.mean(shares)), 2), "turns_split_hi_en": split,
           "hindi": hindi, "english": english}
    print(f"  {name}: Hindi CER {row['hindi_cer']:.1%}, English WER {row['english_wer']:.1%}, RTF {row['rtf']}, "
          f"Devanagari {row['devanagari_share']:.0%}, split {split}/{len(clips)}", flush=True)
    return row


def main() -> int:
    clips = turns()
    print(f"whisper-base on {len(clips)} Hindi-English turns ({sum(len(c) for c in clips) / 16000:.1f} s), "
          "through G.711 ...", flush=True)
    rows = [measure(name, settings, clips) for name, settings in SETTINGS]
    width = max(len(r["setting"]) for r in rows)
    print(f"\n{'setting':<{width}}  Hindi CER  English WER    RTF  Devanagari")
    for r in rows:
        print(f"{r['setting']:<{width}}  {r['hindi_cer']:>9.1%}  {r['english_wer']:>11.1%}  {r['rtf']:>5.3f}  "
              f"{r['devanagari_share']:>10.0%}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"bench": "hindi", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
           "turns": [{"hindi": hi, "english": en} for hi, en in TURNS], "rows": rows}
    (RESULTS / "hindi.json").write_text(json.dumps(out, indent=2, ensure_ascii=False, default=list))
    print(f"\nwrote {RESULTS / 'hindi.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
