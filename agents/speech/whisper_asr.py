"""Multilingual ASR (Hindi, English, and turns that switch between them) with faster-whisper on CTranslate2.

Whisper gives a whole window one language, so a turn is first cut at its pauses of `MIN_PAUSE_S` or more (webrtcvad)
into chunks of at least `MIN_CHUNK_S`; each chunk is encoded once, its language is read from that encoder output,
and it is decoded in that language from the same output (Decoding, below). Adjacent chunks in one language form one
`Segment`; a switch of language without a pause stays inside one chunk and gets that chunk's language. Chunks where
webrtcvad hears no speech are skipped: Whisper makes words up in silence (2 s of zeros came out as "bhajj").

- Window: Whisper was trained on 30 s windows padded with silence; CTranslate2 also takes shorter ones. A chunk is
  padded by `PAD_S` (to at least `window_s`, at most 30 s), as whisper.cpp's `audio_ctx` does. On 2-3 s turns the
  10 s window gave the transcripts and language probabilities of the 30 s one with a 5x cheaper encoder pass;
  with under 2 s of padding the decoder starts repeating itself. `window_s=30` is Whisper's own window.
- Language: with `languages`, the likeliest of them is taken if Whisper gives it at least
  `MIN_LANGUAGE_PROBABILITY`; below that Whisper is unsure and the first of `languages` is reported. whisper-base
  is sure of English (0.98-1.0 on piper's voice) and seldom of Hindi (espeak's Hindi scores as Thai, Chinese, even
  English at 0.2-0.5), so a Hindi-English deployment lists `hi` first. Without `languages`, Whisper's top language
  is taken.
- Decoding, chosen by `python -m bench.cascaded hindi` (bench/hindi.py: 12 turns of espeak-ng Hindi and piper
  English through G.711; one run, 2026-11-26, on the shared 2-core machine): Hindi chunks get beam 5 (`BEAMS`) and
  a Devanagari previous-text prompt (`PROMPTS`); English stays greedy, its final pass being on the turn's critical
  path. Greedy decoding without a prompt wrote the Hindi in Urdu's Perso-Arabic or Latin letters (17% Devanagari)
  at a CER of 138.8%; with them 96% was Devanagari, CER 64.2%, CPU RTF 0.36 against 0.33. The prompt still comes
  out alone for a sentence that starts with its word, and some chunks repeat a syllable. Left off, as options:
  Whisper's temperature fallback (`temperatures`: a decode that compresses over 2.4 or scores under -1 is sampled
  again, hotter; CER 96.3% alone, 64.2% with the prompt and beam 5, as without it, at up to twice the CPU), and
  faster-whisper's silero VAD trimming each chunk (`vad_filter`, word times put back on the turn's clock): with a
  200 ms pad it lowered the CER to 55.5% and the English WER from 9.4 to 1.6% by letting one English chunk be
  recognised as English, but it clipped the quiet onsets of Asterisk's English prompts (12 prompts: WER 4% -> 7%);
  with a 400 ms pad the prompts kept 4% and the Hindi-English turns lost the gain.
- Confidence: exp of the mean token log-probability of the decoded text, averaged over chunks weighted by length;
  0 when nothing was recognised. A word's confidence is the mean probability of its tokens.
- Word timings come from the cross-attention alignment (CTranslate2 `align`), in seconds from the audio's start.
- Audio: at most 30 s (one phone turn; longer raises `AsrError`).
- Cost: one encoder and one decoder pass per chunk. Chunk results are kept by content (LRU of `_CACHED`), so the
  repeated passes of an incremental transcription only pay for the chunks that changed; `hint` is not needed.
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from agents.speech.asr import SAMPLE_RATE, AsrError, Audio, Segment, Transcript, Word
from media.frames import FRAME_SAMPLES
from media.vad import Vad

MAX_AUDIO_S = 30.0
MIN_CHUNK_S = 1.0
MIN_PAUSE_S = 0.2
MIN_LANGUAGE_PROBABILITY = 0.5
PAD_S = 8.0
_FRAMES_PER_S = 100  # Whisper's mel frames
_MAX_TOKENS = 448
_TOKENS_PER_S = 40
"""Decode limit: Devanagari costs several tokens a syllable; the bound stops a decoder that loops."""
_NO_SPEECH_PROB = 0.6
_SILENCE_LOGPROB = -1.0
"""Whisper's silence rule: no_speech_prob above 0.6 and mean log-probability below -1 means nothing was said."""
PROMPTS = {"hi": "नमस्ते।"}
"""Previous text given to the decoder per language: a Devanagari word has Hindi written in Devanagari."""
BEAMS = {"hi": 5}
"""Beam size per language (others: `beam_size`): beam search for Hindi, greedy for English, whose final pass is on
the turn's critical path."""
_MAX_COMPRESSION = 2.4
"""Whisper's fallback rule: a decode whose text compresses (zlib) more than this repeats itself."""
_PREPEND = "\"'“¿([{-"
_APPEND = "\"'.。,，!！?？:：”)]}、"
_CACHED = 64


def _compression_ratio(text: str) -> float:
    raw = text.encode()
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def choose_language(probs: Mapping[str, float], languages: tuple[str, ...]) -> str:
    """The language of a chunk from Whisper's probabilities (see the module doc)."""
    if not languages:
        return max(probs, key=lambda lang: probs[lang])
    best = max(languages, key=lambda lang: probs.get(lang, 0.0))
    return best if probs.get(best, 0.0) >= MIN_LANGUAGE_PROBABILITY else languages[0]


def speech_frames(audio: Audio) -> list[bool]:
    """webrtcvad's verdict on each whole 20 ms frame."""
    vad = Vad(2)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    return [vad.is_speech(pcm[i : i + FRAME_SAMPLES].tobytes())
            for i in range(0, len(pcm) - FRAME_SAMPLES + 1, FRAME_SAMPLES)]


def pause_cuts(speech: list[bool], min_pause_s: float = MIN_PAUSE_S, min_chunk_s: float = MIN_CHUNK_S) -> list[int]:
    """Sample indices to cut the audio of `speech` (see `speech_frames`) at: the middles of pauses of at least
    `min_pause_s` between speech, keeping every piece at least `min_chunk_s` long."""
    n = len(speech) * FRAME_SAMPLES
    min_pause, min_chunk = min_pause_s * SAMPLE_RATE, min_chunk_s * SAMPLE_RATE
    cuts: list[int] = []
    last = 0
    i = 0
    while i < len(speech):
        if speech[i]:
            i += 1
            continue
        j = i
        while j < len(speech) and not speech[j]:
            j += 1
        if i > 0 and j < len(speech) and (j - i) * FRAME_SAMPLES >= min_pause:
            cut = (i + j) // 2 * FRAME_SAMPLES
            if cut - last >= min_chunk and n - cut >= min_chunk:
                cuts.append(cut)
                last = cut
        i = j
    return cuts


@dataclass(frozen=True)
class _Chunk:
    text: str
    language: str
    logprob: float
    words: tuple[Word, ...]
    """Timed from the chunk's start."""


class WhisperAsr:
    """faster-whisper engine. `model_path`: a CTranslate2 Whisper directory (see `whisper_model`); `compute_type`:
    CTranslate2's (int8, float32, ...); `languages`: the languages callers speak, the fallback first."""

    name = "whisper"

    def __init__(self, model_path: str, compute_type: str = "int8", cpu_threads: int = 1,
                 languages: tuple[str, ...] | None = None, beam_size: int = 1, window_s: float = 10.0,
                 prompts: Mapping[str, str] | None = PROMPTS, beam_sizes: Mapping[str, int] | None = BEAMS,
                 temperatures: tuple[float, ...] = (0.0,),
                 vad_filter: bool = False) -> None:
        path = Path(model_path)
        # without tokenizer.json faster-whisper would fetch a tokenizer from the Hugging Face hub
        missing = [n for n in ("model.bin", "config.json", "tokenizer.json") if not (path / n).is_file()]
        if not path.is_dir() or missing:
            reason = "not a directory" if not path.is_dir() else f"missing {', '.join(missing)}"
            raise AsrError(f"whisper: cannot load model {model_path}: {reason}")
        try:
            from faster_whisper import WhisperModel

            self._model: Any = WhisperModel(str(path), device="cpu", compute_type=compute_type,
                                            cpu_threads=cpu_threads, local_files_only=True)
        except Exception as e:
            raise AsrError(f"whisper: cannot load model {model_path}: {e}") from e
        if not self._model.model.is_multilingual:
            languages = ("en",)
        unknown = [lang for lang in languages or () if lang not in self._model.supported_languages]
        if unknown:
            raise AsrError(f"whisper: model {model_path} does not know the languages {unknown}")
        self._languages = tuple(languages or ())
        self._beams = {**dict.fromkeys(self._model.supported_languages, beam_size), **(beam_sizes or {})}
        self._prompts = dict(prompts or {})
        self._temperatures = temperatures
        self._vad_filter = vad_filter
        self._window_frames = int(min(MAX_AUDIO_S, window_s) * _FRAMES_PER_S)
        self._tokenizers: dict[str, Any] = {}
        self._cache: OrderedDict[bytes, _Chunk] = OrderedDict()
        self._lock = threading.Lock()

    def transcribe(self, audio: Audio, final: bool, hint: Transcript | None = None) -> Transcript:
        audio_s = len(audio) / SAMPLE_RATE
        if audio_s > MAX_AUDIO_S:
            raise AsrError(f"whisper: got {audio_s:.1f} s of audio, more than the {MAX_AUDIO_S:.0f} s it takes")
        fallback = self._languages[0] if self._languages else "en"
        if len(audio) < FRAME_SAMPLES:
            return Transcript("", fallback, 0.0, final, audio_s)
        speech = speech_frames(audio)
        cuts = pause_cuts(speech) if len(self._languages) != 1 else []
        bounds = [0, *cuts, len(audio)]
        chunks = [(a / SAMPLE_RATE, b / SAMPLE_RATE, self._chunk(audio[a:b])) for a, b in pairwise(bounds)
                  if any(speech[a // FRAME_SAMPLES : b // FRAME_SAMPLES + 1])]
        spoken = [(a, b, c) for a, b, c in chunks if c.text]
        if not spoken:
            return Transcript("", fallback, 0.0, final, audio_s)
        words = tuple(Word(w.text, round(a + w.start_s, 2), round(a + w.end_s, 2), w.confidence)
                      for a, _, c in spoken for w in c.words)
        segments: list[Segment] = []
        for a, b, c in spoken:
            start = a + c.words[0].start_s if c.words else a
            end = a + c.words[-1].end_s if c.words else b
            if segments and segments[-1].language == c.language:
                prev = segments.pop()
                segments.append(Segment(f"{prev.text} {c.text}", c.language, prev.start_s, round(end, 2)))
            else:
                segments.append(Segment(c.text, c.language, round(start, 2), round(end, 2)))
        spans: dict[str, float] = {}
        for s in segments:
            spans[s.language] = spans.get(s.language, 0.0) + s.end_s - s.start_s
        weights = np.array([b - a for a, b, _ in spoken])
        confidence = float(np.dot(weights, np.exp([c.logprob for _, _, c in spoken])) / weights.sum())
        return Transcript(" ".join(s.text for s in segments), max(spans, key=lambda lang: spans[lang]),
                          round(confidence, 3), final, audio_s, words, tuple(segments))

    def _chunk(self, audio: Audio) -> _Chunk:
        key = hashlib.blake2b(audio.tobytes(), digest_size=16).digest()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        chunk = self._recognise(audio)
        with self._lock:
            self._cache[key] = chunk
            if len(self._cache) > _CACHED:
                self._cache.popitem(last=False)
        return chunk

    def _recognise(self, audio: Audio) -> _Chunk:
        from faster_whisper.audio import pad_or_trim

        m = self._model
        offset_s = 0.0
        if self._vad_filter:
            from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

            spans = get_speech_timestamps(audio, VadOptions(speech_pad_ms=200))
            if not spans:
                return _Chunk("", self._languages[0] if self._languages else "en", 0.0, ())
            offset_s = spans[0]["start"] / SAMPLE_RATE
            audio = np.concatenate(collect_chunks(audio, spans)[0])
        features = m.feature_extractor(audio)
        frames = features.shape[-1] - 1
        window = min(int(MAX_AUDIO_S * _FRAMES_PER_S), max(self._window_frames, frames + int(PAD_S * _FRAMES_PER_S)))
        encoded = m.encode(pad_or_trim(features, window))
        if len(self._languages) == 1:
            language = self._languages[0]
        else:
            probs = {token[2:-2]: p for token, p in m.model.detect_language(encoded)[0]}
            language = choose_language(probs, self._languages)
        tok = self._tokenizer(language)
        prompt = [*tok.sot_sequence, tok.no_timestamps]
        if previous := self._prompts.get(language):
            prompt = [tok.sot_prev, *tok.encode(" " + previous.strip()), *prompt]
        limit = min(_MAX_TOKENS, len(prompt) + 8 + int(_TOKENS_PER_S * len(audio) / SAMPLE_RATE))
        tries: list[tuple[bool, float, str, list[int], float]] = []  # (not repeating, logprob, text, ids, no speech)
        for temperature in self._temperatures:  # Whisper's fallback: a failed decode is sampled again, hotter
            result = m.model.generate(encoded, [prompt], beam_size=self._beams[language] if temperature == 0 else 1,
                                      sampling_topk=1 if temperature == 0 else 0,
                                      sampling_temperature=temperature or 1.0, max_length=limit,
                                      return_scores=True, return_no_speech_prob=True, suppress_blank=True,
                                      suppress_tokens=self._suppressed(tok))[0]
            ids = [t for t in result.sequences_ids[0] if t < tok.eot]
            n = len(result.sequences_ids[0])
            logprob = float(result.scores[0]) * n / (n + 1)  # the score is the log-probability divided by n
            text = tok.decode(ids).strip()
            tries.append((_compression_ratio(text) <= _MAX_COMPRESSION, logprob, text, ids, result.no_speech_prob))
            if tries[-1][0] and logprob >= _SILENCE_LOGPROB:
                break
        else:  # none passed: the likeliest that does not repeat itself, as faster-whisper keeps
            tries.sort(key=lambda t: (t[0], t[1]))
        _, logprob, text, ids, no_speech = tries[-1]
        if not text or (no_speech > _NO_SPEECH_PROB and logprob < _SILENCE_LOGPROB):
            return _Chunk("", language, logprob, ())
        words = tuple(Word(w.text, round(w.start_s + offset_s, 2), round(w.end_s + offset_s, 2), w.confidence)
                      for w in self._words(tok, ids, encoded, frames))
        return _Chunk(text, language, logprob, words)

    def _words(self, tok: Any, ids: list[int], encoded: Any, frames: int) -> tuple[Word, ...]:
        from faster_whisper.transcribe import merge_punctuations

        alignment = self._model.find_alignment(tok, [ids], encoded, frames)[0]
        merge_punctuations(alignment, _PREPEND, _APPEND)
        return tuple(Word(w["word"].strip(), float(w["start"]), float(w["end"]), round(float(w["probability"]), 3))
                     for w in alignment if w["word"].strip())

    def _tokenizer(self, language: str) -> Any:
        if language not in self._tokenizers:
            from faster_whisper.tokenizer import Tokenizer

            self._tokenizers[language] = Tokenizer(self._model.hf_tokenizer, self._model.model.is_multilingual,
                                                   task="transcribe", language=language)
        return self._tokenizers[language]

    @staticmethod
    def _suppressed(tok: Any) -> list[int]:
        from faster_whisper.transcribe import get_suppressed_tokens

        return list(get_suppressed_tokens(tok, [-1]))
