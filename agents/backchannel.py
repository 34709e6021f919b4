"""Backchannels told by their words: was the caller's burst over the agent's reply "uh-huh" or an interruption?
Sans-IO: fed the listener's frames (with whether playout is paused for the caller) and its transcripts, with times.

The media detector pauses playout at the caller's onset and, alone, decides by duration: `confirm_ms` of speech
cancels the reply, a shorter burst resumes it (media/barge_in.py). An agent with an ASR also hears the words: when
the transcript (partial or final) of the burst that paused playout is only backchannel words, the pause resumes,
even when the burst outlasts `confirm_ms` (the detector holds it up to `wait_ms` for the words); when it has other
words, the barge-in is confirmed: at once with `confirm_early` (the default; the burst is transcribed
`first_words_ms` after the pause, so the words of a short interruption can come before `confirm_ms` does), else no
sooner than `confirm_ms`. Transcripts of under `first_words_ms` of the burst are not judged: moonshine heard a
syllable as "So?" (bench/backchannel_words.py measures the clip set either way).
A partial "yeah" of "yeah, but ..." resumes playout and the next transcript ("yeah but") confirms the barge-in then.
Hand-written: a word list and a little state; no library judges backchannels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["backchannel", "interruption"]

DEFAULT_WORDS = (
    "uh-huh", "uh huh", "mm-hmm", "mhm", "hmm", "mm", "uh", "um", "ah", "oh", "yeah", "yep", "yes", "okay", "ok",
    "right", "sure", "alright", "all right", "i see", "got it",
)
_WORD = re.compile(r"[a-z0-9']+")


def words_of(text: str) -> tuple[str, ...]:
    """The lower-case words of `text`; hyphens and punctuation separate words ("Uh-huh." -> uh, huh), quotes
    around them go (moonshine sometimes quotes a whole utterance)."""
    return tuple(w for w in (m.strip("'") for m in _WORD.findall(text.lower())) if w)


def is_backchannel(text: str, phrases: Iterable[tuple[str, ...]]) -> bool | None:
    """Whether `text` is nothing but backchannel phrases, one after another ("Yeah, okay." with `yeah` and `okay`);
    None when it has no words."""
    words = words_of(text)
    if not words:
        return None
    options = set(phrases)
    ok = [True] + [False] * len(words)  # ok[i]: the first i words are a run of phrases
    for i in range(len(words)):
        if ok[i]:
            for p in options:
                if words[i : i + len(p)] == p:
                    ok[i + len(p)] = True
    return ok[-1]


@dataclass(frozen=True)
class BackchannelSettings:
    words: tuple[str, ...] = DEFAULT_WORDS
    """Backchannel words and phrases; a burst whose transcript is only these (in any order, repeated) resumes."""
    first_words_ms: int = 300
    """After a pause, the burst's audio is transcribed this early (its first words); transcripts of less of it are
    not judged."""
    wait_ms: int = 800
    """How long a pause that outlasts `confirm_ms` waits for words before its duration confirms it."""
    confirm_early: bool = True
    """Words that are no backchannel confirm the barge-in at once; False: no sooner than `confirm_ms`, so a shorter
    burst resumes by its duration whatever its words (the clip set stopped as often either way)."""


class BackchannelJudge:
    """One call's judge. Feed `frame()` every inbound frame and `words()` every transcript of the caller's turn."""

    def __init__(self, settings: BackchannelSettings | None = None) -> None:
        self.s = settings or BackchannelSettings()
        self._phrases = tuple(p for p in (words_of(w) for w in self.s.words) if p)
        self._turn = -1
        """The listener's turn of the last pause; transcripts of other turns are not judged."""
        self._paused = False
        self._paused_at = 0.0
        self._pending = False
        """A pause of this turn awaits its verdict."""
        self._asked = True
        self._done = False
        """The turn was judged an interruption: nothing more to decide."""

    def frame(self, now: float, paused: bool, turn: int) -> bool:
        """One inbound frame at `now`: whether playout is paused for the caller after it, in the listener's turn
        `turn`. True when the burst's first words are due: transcribe its audio up to the end of this frame."""
        if paused and not self._paused:
            if turn != self._turn:
                self._turn, self._done = turn, False
            self._paused_at, self._pending, self._asked = now, not self._done, False
        self._paused = paused
        if self._pending and not self._asked and turn == self._turn \
                and (now - self._paused_at) * 1000.0 >= self.s.first_words_ms:
            self._asked = True
            return True
        return False

    def words(self, text: str, until: float, turn: int) -> Verdict | None:
        """A transcript of turn `turn`'s audio up to `until`: the verdict to act on now, or None (no words, no pause
        to judge, under `first_words_ms` of audio since the pause, or nothing new: a backchannel that already
        resumed its pause)."""
        if turn != self._turn or self._done or until < self._paused_at + self.s.first_words_ms / 1000.0:
            return None  # not this pause's speech, or too little of it: a syllable came back as "So?"
        bc = is_backchannel(text, self._phrases)
        if bc is None:
            return None
        if not bc:
            self._done, self._pending = True, False
            return "interruption"
        if self._pending:
            self._pending = False
            return "backchannel"
        return None
