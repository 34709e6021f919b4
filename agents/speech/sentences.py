"""Split streamed LLM text into sentences and clauses for TTS, so speech starts before the reply is complete.

A chunk ends at `.`, `!`, `?`, `…` or a line break once the next character shows it is a boundary (so "3.5",
"1,000", "Mr." and "e.g." stay whole), and at `,`, `;`, `:` or a dash only when the pending text is already
long (`first_min_chars` for the first chunk, so the first sound comes early; `clause_min_chars` after that).
"""

from __future__ import annotations

SENTENCE_END = ".!?…"
CLAUSE_END = ",;:—–"
CLOSERS = "\"')]}»”’"
_ABBREVIATIONS = "mr mrs ms dr prof sr jr st mt ft vs etc approx inc ltd co corp dept fig"
_MONTHS = "jan feb mar apr jun jul aug sep sept oct nov dec"
ABBREVIATIONS = frozenset(_ABBREVIATIONS.split() + _MONTHS.split())


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the `.` at `dot` ends an abbreviation or an initial rather than a sentence."""
    start = max(text.rfind(" ", 0, dot), text.rfind("\n", 0, dot)) + 1
    word = text[start:dot].lstrip("\"'([{«“‘").rstrip(".").lower()
    if not word:
        return False
    return "." in word or word in ABBREVIATIONS or (len(word) == 1 and word.isalpha() and word != "i")


class SentenceSplitter:
    """Sans-IO: `feed` text deltas as they arrive and speak each returned chunk; `flush` at the end of the reply."""

    def __init__(self, first_min_chars: int = 20, clause_min_chars: int = 60) -> None:
        self.first_min_chars = first_min_chars
        self.clause_min_chars = clause_min_chars
        self._buf = ""
        self._emitted = False

    def feed(self, text: str) -> list[str]:
        """Add a delta; return the chunks it completes (stripped, in order)."""
        self._buf += text
        out: list[str] = []
        while (end := self._boundary()) is not None:
            out.append(self._buf[:end].strip())
            self._buf = self._buf[end:].lstrip()
            self._emitted = True
        return out

    def flush(self) -> list[str]:
        """End of the reply: return what is left and start afresh."""
        rest = self._buf.strip()
        self._buf = ""
        self._emitted = False
        return [rest] if rest else []

    def _boundary(self) -> int | None:
        """End index of the first complete chunk in the buffer, if any."""
        buf = self._buf
        clause_min = self.clause_min_chars if self._emitted else self.first_min_chars
        for i, c in enumerate(buf):
            if c == "\n":
                if _has_letter(buf[:i]):
                    return i
                continue
            sentence = c in SENTENCE_END
            if not sentence and c not in CLAUSE_END:
                continue
            end = i + 1
            while end < len(buf) and buf[end] in CLOSERS:
                end += 1
            if end == len(buf):
                return None  # the next character decides
            if not buf[end].isspace() or not _has_letter(buf[:end]):
                continue
            if sentence and not (c == "." and _is_abbreviation(buf, i)):
                return end
            if not sentence and len(buf[:end].strip()) >= clause_min:
                return end
        return None


def _has_letter(text: str) -> bool:
    return any(ch.isalpha() for ch in text)
