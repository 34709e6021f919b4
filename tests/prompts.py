"""Asterisk's recorded prompts with their transcripts (Debian `asterisk-core-sounds-en-wav`), for ASR tests.

Prompts are 8 kHz recordings of one human voice; `through_g711` sends one through the phone codec and up to the
16 kHz the gateway works at, as a SIP call would.
"""

from __future__ import annotations

import gzip
import re
import wave
from dataclasses import dataclass
from pathlib import Path

from media.g711 import ulaw_decode, ulaw_encode
from media.resample import resample

SOUNDS = Path("/usr/share/asterisk/sounds/en")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str

    @property
    def path(self) -> Path:
        return SOUNDS / f"{self.name}.wav"


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower().replace("-", " ")).split()


def prompts(n: int, min_words: int = 3, max_words: int = 20) -> list[Prompt]:
    """The first `n` prompts (by name) whose transcript is plain words (no digits, no [tone] notes)."""
    out: list[Prompt] = []
    with gzip.open(TRANSCRIPTS, "rt", errors="replace") as f:
        for line in f:
            if ":" not in line or line.startswith(";"):
                continue
            name, text = (s.strip() for s in line.split(":", 1))
            if not text or "[" in text or re.search(r"\d", text) or not (SOUNDS / f"{name}.wav").exists():
                continue
            if min_words <= len(words(text)) <= max_words:
                out.append(Prompt(name, text))
    return sorted(out, key=lambda p: p.name)[:n]


def through_g711(path: Path) -> bytes:
    """The prompt as 16 kHz PCM16 after a mu-law round trip at 8 kHz."""
    with wave.open(str(path)) as w:
        return g711_round_trip(w.readframes(w.getnframes()), w.getframerate())


def g711_round_trip(pcm: bytes, rate: int) -> bytes:
    """PCM16 at `rate` as 16 kHz PCM16 after a mu-law round trip at 8 kHz."""
    if rate != 8000:
        pcm = resample(pcm, rate, 8000)
    return resample(ulaw_decode(ulaw_encode(pcm)), 8000)


def edit_distance(a: list[str], b: list[str]) -> int:
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[:], i
        for j, y in enumerate(b, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (x != y))
    return d[-1]


def wer(refs: list[str], hyps: list[str]) -> float:
    errors = sum(edit_distance(words(r), words(h)) for r, h in zip(refs, hyps, strict=True))
    return errors / max(1, sum(len(words(r)) for r in refs))
