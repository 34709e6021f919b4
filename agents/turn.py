"""End of turn: when has the caller finished speaking? Sans-IO; fed inbound frames and transcripts with their times.

The caller's turn ends `endpoint_ms` after the last speech frame, unless the words so far sound unfinished (a
trailing "and", "my number is", a digit string being read out), or the agent expects a code, in which case the
turn waits `hold_ms`. A transcript of everything up to the pause is requested `pause_ms` into the silence, so the
decision and the final transcript are ready at about the same time.

`reads_as` judges the final transcript for the reply's commit: a complete sentence is answered at the endpoint, an
unfinished or doubtful one only after the longer `commit_ms` (agents.cascaded). The rules are a few word lists and
the recogniser's own punctuation, hand-written because no library judges whether a phone caller's sentence is over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from media.frames import FRAME_MS

_UNFINISHED = re.compile(
    r"(\b(and|or|but|so|because|the|a|an|to|of|for|with|my|is|are|was|um|uh|er|erm|like|number|code|at|in|on|"
    r"then|if|which|who|from|about|it's|its|i'm|we're)|[\d,\-])\W*$",
    re.IGNORECASE,
)
_DIGIT_WORDS = re.compile(
    r"\b(zero|oh|one|two|three|four|five|six|seven|eight|nine|double|triple|[a-z])\W*$", re.IGNORECASE
)


_SHORT_ANSWERS = frozenset({
    "yes", "yeah", "yep", "no", "nope", "okay", "ok", "sure", "hi", "hello", "hey", "thanks", "bye", "goodbye",
    "right", "correct", "wrong", "stop", "help", "repeat",
})


def sounds_unfinished(text: str, confidence: float = 1.0) -> bool:
    """Whether a transcript stops where a speaker would go on: a conjunction, a filler, a digit, or a lone word
    that is not a usual one-word answer, or words the recogniser is unsure of (the rest is probably coming)."""
    t = text.strip()
    if not t:
        return False
    words = re.findall(r"[a-z']+", t.lower())
    if len(words) == 1 and words[0] not in _SHORT_ANSWERS:
        return True
    return confidence < 0.5 or bool(_UNFINISHED.search(t) or _DIGIT_WORDS.search(t))


_QUESTION_START = re.compile(
    r"^(what|when|where|who|whom|whose|why|how|which|can|could|would|will|do|does|did|is|are|was|were|may|should|"
    r"have|has)\b", re.IGNORECASE,
)
_THANKS = re.compile(r"\b(please|thanks|thank you)\W*$", re.IGNORECASE)

Reading = Literal["complete", "unfinished", "open"]


def reads_as(text: str, confidence: float = 1.0) -> Reading:
    """How a transcript reads at its end: `unfinished` where a speaker would go on (`sounds_unfinished`: a digit or
    letter of a code, a conjunction or preposition, a filler, "my number is"); `complete` when it ends cleanly (the
    recogniser's closing `.`, `?` or `!`; without punctuation, a question of three words or more, a usual one-word
    answer, or a closing "please"/"thank you"); `open` otherwise (nothing heard, or unpunctuated words that may
    go on)."""
    t = text.strip().strip("\"'")  # moonshine sometimes quotes a whole utterance
    if not t:
        return "open"
    if sounds_unfinished(t, confidence):
        return "unfinished"
    words = re.findall(r"[a-z']+", t.lower())
    if t[-1] in ".?!" or _THANKS.search(t) or (len(words) == 1 and words[0] in _SHORT_ANSWERS):
        return "complete"
    if len(words) >= 3 and _QUESTION_START.match(t):
        return "complete"
    return "open"


@dataclass(frozen=True)
class TurnSettings:
    endpoint_ms: int = 240
    """Silence after speech that ends a turn whose words sound finished."""
    hold_ms: int = 900
    """Silence that ends a turn which sounds unfinished, or while the agent expects a code or a number."""
    pause_ms: int = 80
    """Silence after which the utterance so far is transcribed as a likely final."""
    partial_every_ms: int = 600
    """While speech goes on, a partial transcript is requested this often."""
    min_speech_ms: int = 120
    """Shorter bursts (a click, a cough) are not a turn."""
    max_turn_s: float = 25.0
    """A turn this long is ended even without silence (engines take up to 30 s)."""


@dataclass(frozen=True)
class TranscribeDue:
    """Transcribe the utterance's audio up to `until` (a partial while speech goes on, or at a pause)."""

    until: float
    at_pause: bool


@dataclass(frozen=True)
class TurnStarted:
    t: float


@dataclass(frozen=True)
class TurnEnded:
    """The caller is done: speech ran from `start` to `speech_end`; decided at `t`."""

    t: float
    start: float
    speech_end: float


@dataclass(frozen=True)
class TurnDropped:
    """A burst too short to be speech."""

    t: float


TurnEvent = TranscribeDue | TurnStarted | TurnEnded | TurnDropped


class TurnDetector:
    def __init__(self, settings: TurnSettings | None = None) -> None:
        self.s = settings or TurnSettings()
        self.expect_code = False
        self._start: float | None = None
        self._last_speech = 0.0
        self._speech_ms = 0
        self._last_partial = 0.0
        self._pause_requested = False
        self._text = ""
        self._text_until = 0.0
        self._confidence = 1.0

    @property
    def in_turn(self) -> bool:
        return self._start is not None

    def transcript(self, text: str, until: float, confidence: float = 1.0) -> None:
        """A transcript of the utterance's audio up to `until` arrived."""
        if self._start is not None and until >= self._text_until:
            self._text, self._text_until, self._confidence = text, until, confidence

    def frame(self, now: float, speech: bool) -> list[TurnEvent]:
        """One inbound frame starting at `now`; `speech`: the detector counted it as caller speech."""
        end = now + FRAME_MS / 1000.0
        if self._start is None:
            if not speech:
                return []
            self._start, self._last_speech, self._speech_ms = now, end, FRAME_MS
            self._last_partial, self._pause_requested = now, False
            self._text, self._text_until = "", now
            return [TurnStarted(now)]
        if speech:
            self._last_speech = end
            self._speech_ms += FRAME_MS
            self._pause_requested = False
            if (end - self._last_partial) * 1000 >= self.s.partial_every_ms:
                self._last_partial = end
                return [TranscribeDue(end, at_pause=False)]
            if end - self._start >= self.s.max_turn_s:
                return self._end(end)
            return []
        silence_ms = (end - self._last_speech) * 1000
        if self._speech_ms < self.s.min_speech_ms and silence_ms >= self.s.endpoint_ms:
            self._start = None
            return [TurnDropped(end)]
        events: list[TurnEvent] = []
        if not self._pause_requested and silence_ms >= self.s.pause_ms:
            self._pause_requested = True
            events.append(TranscribeDue(self._last_speech, at_pause=True))
        if silence_ms >= self._needed_ms():
            events.extend(self._end(end))
        return events

    def _needed_ms(self) -> int:
        if self.expect_code:
            return self.s.hold_ms
        heard = self._text_until >= self._last_speech - 1e-6
        if not heard:  # the pause's transcript is not back yet: wait for it, up to the hold time
            return self.s.hold_ms
        return self.s.hold_ms if sounds_unfinished(self._text, self._confidence) else self.s.endpoint_ms

    def _end(self, now: float) -> list[TurnEvent]:
        assert self._start is not None
        ev = TurnEnded(now, self._start, self._last_speech)
        self._start = None
        return [ev]
