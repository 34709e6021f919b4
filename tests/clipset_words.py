"""The clip set's backchannels and interruptions judged by their words too (agents/backchannel.py), beside the
duration alone: how many stop the agent either way.

Each clip runs through CallMedia frame by frame (tests/unit/sim.py) with an imitation of the cascaded listener on
the simulation's clock: the real turn detector and judge, and real ASR passes (moonshine, in this process) over the
turn's audio, whose results arrive as long after their request as they took to compute here, one pass at a time
(the ASR worker serves one at a time). Run by `python -m bench.backchannel_words`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agents.backchannel import BackchannelJudge, BackchannelSettings
from agents.speech.asr import AsrEngine, Transcript, pcm16_to_float
from agents.turn import TranscribeDue, TurnDetector, TurnStarted
from media.events import BargeInConfirmed, BargeInPaused, BargeInResumed
from media.pipeline import CallMedia
from tests import clipset
from tests.unit.sim import simulate

PREROLL_FRAMES = 15  # as agents/listener.py
TAIL_S = 0.1


class WordsListener:
    """`after_frame` for `simulate`: turns, the judge's early pass, partials and the pause's pass, ASR results fed
    to the judge when they would arrive, and its verdicts given to the media (`CallMedia.decide`)."""

    def __init__(self, asr: AsrEngine, settings: BackchannelSettings) -> None:
        self.asr = asr
        self.turns = TurnDetector()
        self.judge = BackchannelJudge(settings)
        self.turn = 0
        self._preroll: deque[bytes] = deque(maxlen=PREROLL_FRAMES)
        self._buf: list[bytes] = []
        self._t0 = 0.0
        self._busy_until = 0.0
        self._due: list[tuple[float, str, float, int]] = []
        """ASR results still computing on the simulated clock: (ready at, text, audio until, turn)."""
        self._best: Transcript | None = None
        self.texts: list[str] = []
        self.asr_ms: list[float] = []

    def __call__(self, t: float, media: CallMedia, frame: bytes) -> None:
        for ready, text, until, turn in sorted(r for r in self._due if r[0] <= t):
            self._due.remove((ready, text, until, turn))
            verdict = self.judge.words(text, until, turn)
            if verdict is not None:
                media.decide(t, verdict == "backchannel")
        (self._buf if self.turns.in_turn else self._preroll).append(frame)
        for ev in self.turns.frame(t, media.detector.candidate):
            if isinstance(ev, TurnStarted):
                self.turn += 1
                self._buf = list(self._preroll)
                self._preroll.clear()
                self._t0 = t - (len(self._buf) - 1) * 0.02
                self._best = None
            elif isinstance(ev, TranscribeDue):
                self._transcribe(t, ev.until + (TAIL_S if ev.at_pause else 0.0), ev.at_pause)
        if self.judge.frame(t, media.detector.paused, self.turn) and self.turns.in_turn:
            self._transcribe(t, t + 0.02, False)

    def _transcribe(self, t: float, until: float, final: bool) -> None:
        pcm = b"".join(self._buf)[: int(max(0.0, until - self._t0) * 16000) * 2]
        started = time.perf_counter()
        tr = self.asr.transcribe(pcm16_to_float(pcm), final, self._best)
        self._best = tr  # the listener's hint for the next pass (it keeps the latest audio's; passes run in order)
        text = tr.text
        took = time.perf_counter() - started
        self.asr_ms.append(took * 1000)
        self._busy_until = max(t, self._busy_until) + took
        self._due.append((self._busy_until, text, until, self.turn))
        self.texts.append(f"{text} ({tr.confidence:.2f})")


@dataclass
class Row:
    """One kind of clip: how many stopped the agent by duration alone and with words, and what the words did."""

    clips: int = 0
    stops_duration: int = 0
    stops_words: int = 0
    resumed_by_words: int = 0
    confirmed_by_words: int = 0
    confirm_ms_duration: list[float] = field(default_factory=list)
    confirm_ms_words: list[float] = field(default_factory=list)
    """Onset -> confirmation of each clip that stopped the agent."""
    misheard: list[str] = field(default_factory=list)
    """The transcripts of backchannels that stopped the agent with words."""

    def summary(self) -> dict[str, object]:
        def p50(x: list[float]) -> float | None:
            return round(float(np.median(x)), 1) if x else None

        return {"clips": self.clips, "stops_duration_only": self.stops_duration, "stops_with_words": self.stops_words,
                "resumed_by_words": self.resumed_by_words, "confirmed_by_words": self.confirmed_by_words,
                "confirm_p50_ms_duration_only": p50(self.confirm_ms_duration),
                "confirm_p50_ms_with_words": p50(self.confirm_ms_words), "misheard": self.misheard}


def _confirm_ms(events: Sequence[object]) -> float | None:
    c = next((e for e in events if isinstance(e, BargeInConfirmed)), None)
    return None if c is None else (c.t - c.onset_t) * 1000.0


def evaluate_words(asr: AsrEngine, settings: BackchannelSettings | None = None, wait_ms: int | None = None,
                   kinds: Sequence[str] = ("backchannel", "long_backchannel", "interrupt")) -> dict[str, Row]:
    """Each clip of the clip set's `kinds` twice: duration alone, then with the words (a WordsListener)."""
    s = settings or BackchannelSettings()
    wait = s.wait_ms if wait_ms is None else wait_ms
    agents = clipset.agent_turns()
    sounds = {"backchannel": clipset.backchannels(), "long_backchannel": clipset.long_backchannels(),
              "interrupt": clipset.caller_utterances()}
    rows: dict[str, Row] = {}
    for kind in kinds:
        row = rows[kind] = Row()
        for j, sound in enumerate(sounds[kind]):
            at = 1.5 + (j % 3) * 0.4
            common = dict(caller_at_s=at, noise_snr_db=30, seconds=at + len(sound) / 16000 + 2.5, seed=j)
            plain = simulate(agents[j % len(agents)], sound, **common)  # type: ignore[arg-type]
            listener = WordsListener(asr, s)
            words = simulate(agents[j % len(agents)], sound, after_frame=listener, words_wait_ms=wait,
                             words_confirm_early=s.confirm_early, **common)  # type: ignore[arg-type]
            row.clips += 1
            if plain.first(BargeInPaused) is None:
                continue  # never paused: nothing for the words to decide
            for r, stops, times in ((plain, "stops_duration", row.confirm_ms_duration),
                                    (words, "stops_words", row.confirm_ms_words)):
                ms = _confirm_ms(r.events)
                if ms is not None:
                    setattr(row, stops, getattr(row, stops) + 1)
                    times.append(ms)
            row.resumed_by_words += any(isinstance(e, BargeInResumed) and e.by == "words" for e in words.events)
            row.confirmed_by_words += any(isinstance(e, BargeInConfirmed) and e.by == "words" for e in words.events)
            if kind != "interrupt" and _confirm_ms(words.events) is not None:
                row.misheard.append(" | ".join(listener.texts))
    return rows
