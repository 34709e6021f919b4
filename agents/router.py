"""Which backend answers a hybrid call: the cascade or a speech-to-speech model (see agents.hybrid).

`Router` is sans-IO. The agent gives it the caller ID when the call starts, then each caller turn (transcript,
language, ASR confidence, prosody) with the dialog's misses in a row and the clock; it answers `Stay` or
`Escalate(reason)`. Escalation is one way: once escalated, every later question gets the same answer.

Rules, in this order (the first that fires is the reason):
- `vip`: the caller ID matches `vip_callers` (at the start of the call);
- `phrase`: the transcript matches the escalation `phrases`, scored like a dialog intent (`agents.dialog.score`:
  fuzzy example overlap plus 0.5 a keyword) at or above their threshold;
- `intent`: the cascade's dialog ranks one of `intents` first, at or above the dialog's threshold;
- `fallbacks`: the rule-based dialog has missed `fallbacks` turns in a row, so the next turn goes to S2S (an LLM
  cascade reports no misses);
- `language`: the turn's language differs from the call's first;
- `arousal`: the caller sounds excited relative to themselves: the mean of the z-scores of pitch (semitones), level
  (dB) and the arousal score against the call's first `baseline_turns` voiced turns reaches `arousal_z_above`; each
  spread is floored (`Z_FLOORS`), since a few turns say little about a caller's variance and line levels differ;
- `low_confidence`: ASR confidence below `asr_confidence_below` for `low_confidence_turns` turns in a row.

A `Budget` vetoes them all. The S2S spend lies ahead of the escalation (which is one way), and the call's meter
(`CallControl.meter`) only collects usage, so it is estimated: S2S minutes x `usd_per_min`, the rest of the call
taken to last as long as it has lasted so far (at least `min_minutes`; the longer a call has run, the longer it
tends to go on). Over `max_usd`, the call stays on the cascade (`Stay(blocked=...)`). The hybrid agent fills in
`usd_per_min` from the config's `prices:` when the budget does not set it.
"""

from __future__ import annotations

import fnmatch
import math
import re
import statistics
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.brain import UserTurn
from agents.dialog import DialogConfig, IntentConfig, rank_intents, score
from agents.patterns import TextOrRegex, is_regex
from media.paralinguistics import Prosody

Reason = Literal["vip", "phrase", "intent", "fallbacks", "language", "arousal", "low_confidence"]

Z_FLOORS = (1.5, 2.0, 0.07)
"""Least spread assumed for pitch (semitones), level (dB) and arousal (0..1) when z-scoring a turn."""
MIN_VOICED_S = 0.5
"""Turns with less speech, or no pitch, neither set the baseline nor get judged (a "yes" says little)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Phrases(_Strict):
    """What a caller says to ask for more than the cascade gives (examples and keywords as in a dialog intent)."""

    examples: list[str] = [
        "speak to someone", "talk to a person", "a real person", "a human", "speak to a manager",
        "make a complaint", "this is ridiculous", "this is unacceptable",
    ]
    keywords: list[TextOrRegex] = [
        "complaint", "complain", "/\\b(unacceptable|ridiculous|furious|outrageous|lawyer)\\b/",
    ]
    threshold: float = Field(0.6, gt=0, le=2)
    """0.6: one example word of two ("speak about my booking") is not enough, a keyword with one is."""

    @field_validator("keywords")
    @classmethod
    def _valid(cls, v: list[str]) -> list[str]:
        IntentConfig(keywords=v, reply="")
        return v

    def intent(self) -> IntentConfig:
        return IntentConfig(examples=self.examples, keywords=self.keywords, reply="")


class Budget(_Strict):
    max_usd: float = Field(gt=0)
    """Most a call may spend on S2S."""
    usd_per_min: float | None = Field(None, gt=0)
    """The S2S backend's price per minute of call time; default: its `prices.s2s` in + out per minute (an upper
    bound: the caller's audio streams to it all call long, its own at most as long)."""
    min_minutes: float = Field(1.0, ge=0)
    """Least S2S time assumed after an escalation."""


class EscalateWhen(_Strict):
    phrases: Phrases | None = Phrases()
    intents: list[str] = []
    """Intents of the cascade's dialog that go to S2S (for example `person`) instead of being answered."""
    fallbacks: int | None = Field(2, ge=1, le=10)
    language_switch: bool = True
    arousal_z_above: float | None = Field(2.0, gt=0)
    baseline_turns: int = Field(2, ge=1, le=10)
    asr_confidence_below: float | None = Field(0.45, gt=0, le=1)
    low_confidence_turns: int = Field(2, ge=1, le=10)
    vip_callers: list[TextOrRegex] = []
    """Caller IDs: a user part (`alice`, `+4930123456`), a glob on it (`+4930*`), or a `/regex/` searched in the
    whole From URI."""


@dataclass(frozen=True)
class Stay:
    blocked: str = ""
    """A rule that fired but the budget vetoed ('' when none fired)."""


@dataclass(frozen=True)
class Escalate:
    reason: Reason
    detail: str
    usd_estimate: float | None = None
    """The S2S spend the budget expected (None without a budget)."""


Decision = Stay | Escalate


def caller_matches(pattern: str, caller: str) -> bool:
    """Whether a `vip_callers` pattern matches a caller (a From URI such as `"Al" <sip:+4930123@pbx>`)."""
    if is_regex(pattern):
        return re.search(pattern[1:-1], caller) is not None
    m = re.search(r"(?:sips?|tel):([^@;>]+)", caller)
    return fnmatch.fnmatchcase(m.group(1) if m else caller, pattern)


def _voice(p: Prosody | None) -> tuple[float, float, float] | None:
    """Pitch in semitones above 100 Hz, level in dBFS and arousal, or None for a turn too short to judge."""
    if p is None or p.mean_f0_hz <= 0 or p.speech_s < MIN_VOICED_S:
        return None
    return 12.0 * math.log2(p.mean_f0_hz / 100.0), p.mean_dbfs, p.arousal


class Router:
    def __init__(self, rules: EscalateWhen, budget: Budget | None = None, dialog: DialogConfig | None = None) -> None:
        self.rules = rules
        self.budget = budget
        self.dialog = dialog
        self.escalated: Escalate | None = None
        self.arousal_z: float | None = None
        """The last judged turn's combined z-score (None before the baseline is complete or for short turns)."""
        self._phrases = rules.phrases.intent() if rules.phrases is not None else None
        self._start: float | None = None
        self._language = ""
        self._baseline: list[tuple[float, float, float]] = []
        self._low = 0

    def start(self, caller: str, now: float) -> Decision:
        """The call begins (`now` is its start for the budget)."""
        self._start = now
        hit = next((p for p in self.rules.vip_callers if caller_matches(p, caller)), None)
        return Stay() if hit is None else self._decide("vip", f"caller {caller} matches {hit!r}", now)

    def turn(self, turn: UserTurn, fallbacks: int, now: float) -> Decision:
        """One finished caller turn, before anyone answers it; `fallbacks`: the dialog's misses in a row so far."""
        if self.escalated is not None:
            return self.escalated
        if self._start is None:
            self._start = now
        fired = self._fired(turn, fallbacks)
        return Stay() if fired is None else self._decide(*fired, now)

    def _fired(self, turn: UserTurn, fallbacks: int) -> tuple[Reason, str] | None:
        r = self.rules
        language = turn.language.split("-")[0].lower()
        first = self._language = self._language or language
        z = self._z(_voice(turn.prosody))
        low = r.asr_confidence_below is not None and turn.confidence < r.asr_confidence_below
        self._low = self._low + 1 if low else 0
        if self._phrases is not None and r.phrases is not None:
            s = score(self._phrases, turn.text)
            if s >= r.phrases.threshold:
                return "phrase", f"score {s:.2f}: {turn.text[:80]!r}"
        if self.dialog is not None and r.intents:
            best, top = rank_intents(self.dialog, turn.text)[0]
            if best in r.intents and top >= self.dialog.threshold:
                return "intent", f"{best} ({top:.2f})"
        if r.fallbacks is not None and fallbacks >= r.fallbacks:
            return "fallbacks", f"{fallbacks} misses in a row"
        if r.language_switch and language != first:
            return "language", f"{first} -> {language}"
        if r.arousal_z_above is not None and z is not None and z[0] >= r.arousal_z_above:
            return "arousal", "z {:.1f} (pitch {:+.1f}, level {:+.1f}, arousal {:+.1f})".format(*z)
        if low and self._low >= r.low_confidence_turns:
            return "low_confidence", f"confidence {turn.confidence:.2f}, {self._low} turns in a row"
        return None

    def _z(self, v: tuple[float, float, float] | None) -> tuple[float, float, float, float] | None:
        """The combined z-score and its parts (pitch, level, arousal); turns up to `baseline_turns` set the base."""
        self.arousal_z = None
        if v is None:
            return None
        if len(self._baseline) < self.rules.baseline_turns:
            self._baseline.append(v)
            return None
        parts = [
            (x - statistics.fmean(base)) / max(statistics.pstdev(base), floor)
            for x, base, floor in zip(v, zip(*self._baseline, strict=True), Z_FLOORS, strict=True)
        ]
        self.arousal_z = statistics.fmean(parts)
        return self.arousal_z, parts[0], parts[1], parts[2]

    def _decide(self, reason: Reason, detail: str, now: float) -> Decision:
        estimate = None
        if self.budget is not None:
            assert self._start is not None
            rate = self.budget.usd_per_min or 0.0
            estimate = round(max((now - self._start) / 60.0, self.budget.min_minutes) * rate, 4)
            if estimate > self.budget.max_usd:
                return Stay(blocked=f"{reason}: S2S estimate ${estimate:.2f} over the ${self.budget.max_usd:.2f} cap")
        self.escalated = Escalate(reason, detail, estimate)
        return self.escalated
