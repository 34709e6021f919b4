"""The caller's side of a cascaded call: inbound frames -> turns, transcribed while the caller speaks.

Partials run every `partial_every_ms` of speech and a likely-final pass runs as soon as the caller pauses, each
handing its tokens to the next as a hint, so when the turn detector ends the turn the final transcript is usually
already there (or one short pass away).

An ended turn stays open until the agent commits its reply (starts playing it) or `MERGE_WINDOW_S` passes: if the
caller speaks again before that, the pause was mid-sentence, so the new speech continues the same turn (one buffer,
one transcript). The agent prepares its reply meanwhile, and before playing it checks `holding` (the caller is
continuing) and `continued` (a longer version of the turn is coming) to drop a reply to half a sentence; a reply
that comes after the caller's next, separate turn (slow ASR under load) is still played. A reply played early (the
turn read as complete) leaves the turn open up to the longest commit wait: speech before then cuts the reply as a
barge-in and continues the turn.

With a `BackchannelJudge`, the words of speech that paused the agent's playout decide the pause too: the burst is
transcribed early, and each transcript of it resumes playout (backchannel words) or confirms the barge-in at once
(`CallControl.barge_in_verdict`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from agents.backchannel import BackchannelJudge, words_of
from agents.base import CallControl
from agents.eventlog import trace
from agents.speech.asr import SAMPLE_RATE, AsrError, Transcript, pcm16_to_float
from agents.speech.worker import AsrWorker, PassTiming
from agents.turn import TranscribeDue, TurnDetector, TurnDropped, TurnEnded, TurnStarted
from media.frames import FRAME_MS

PREROLL_FRAMES = 15
"""Audio kept from before the onset (300 ms), so the first syllable is not cut."""
TAIL_S = 0.1
"""Silence kept after the last speech frame in the audio that is transcribed."""
MERGE_WINDOW_S = 2.0
"""How long an ended, uncommitted turn can still be continued by the caller."""

_Pass = tuple[Transcript | None, PassTiming | None]
"""A pass's transcript (None: replaced by a newer partial, or a failed partial) and the ASR worker's timing of it."""


def reply_fate(seq: int, ended: int, continued: Collection[int], holding: bool, now: float, commit_at: float
               ) -> Literal["wait", "play", "drop"]:
    """What becomes of a prepared reply to turn `seq`, `ended` turns into the call: it waits for `commit_at` (and
    while the caller, `holding`, goes on with the turn), plays, or is dropped because the caller went on with the
    turn (`continued`). A later turn of its own ending first (a reply slowed by ASR under load) does not drop it."""
    if ended != seq:
        return "drop" if seq in continued else "play"
    return "wait" if holding or now < commit_at else "play"


@dataclass(frozen=True)
class HeardTurn:
    """One caller turn: its transcript, its audio (16 kHz PCM16) and when things happened (monotonic s)."""

    transcript: Transcript
    pcm: bytes
    start: float
    speech_end: float
    endpoint_at: float
    final_at: float
    passes: int
    seq: int = 0
    continued: bool = False
    """This turn continues the previous one (the caller resumed after a pause): it replaces it."""
    error: str = ""
    """Why there is no transcript (the ASR engine failed); the agent apologises and the call goes on."""
    final_timing: PassTiming | None = None
    """How long the final pass waited in the ASR worker's queue and ran there."""


class Listener:
    def __init__(self, call: CallControl, asr: AsrWorker, turns: TurnDetector,
                 judge: BackchannelJudge | None = None) -> None:
        self.call = call
        self.asr = asr
        self.turns = turns
        self.judge = judge
        """Judges the caller's speech over the agent by its words (None: the barge-in's duration alone does)."""
        self.ended = 0
        """Turns ended so far; a HeardTurn's `seq` is this count when it ended."""
        self.heard: asyncio.Queue[HeardTurn] = asyncio.Queue()
        self.continued: set[int] = set()
        """`seq`s of ended turns the caller went on with: a reply to one of them is obsolete."""
        self._open_until: float | None = None
        """While set, the last turn has ended but may still be continued (until this clock time)."""
        self._start = 0.0
        self._continued = False
        self._preroll: deque[bytes] = deque(maxlen=PREROLL_FRAMES)
        self._buf: list[bytes] = []
        self._t0 = 0.0
        self._turn = 0
        self._best: Transcript | None = None
        self._best_until = 0.0
        self._pause: tuple[float, asyncio.Task[_Pass]] | None = None
        self._passes = 0
        self._tasks: set[asyncio.Future[Any]] = set()

    async def run(self) -> None:
        try:
            while True:
                fr = await self.call.listen()
                if self._open_until is not None and fr.t > self._open_until:
                    self.commit()
                (self._buf if self.turns.in_turn or self._open_until is not None else self._preroll).append(fr.pcm)
                for ev in self.turns.frame(fr.t, fr.speech):
                    if isinstance(ev, TurnStarted):
                        if self._open_until is not None:
                            self._resume()
                        else:
                            self._begin(fr.t)
                    elif isinstance(ev, TranscribeDue):
                        self._transcribe(ev.until + (TAIL_S if ev.at_pause else 0.0), ev.at_pause)
                    elif isinstance(ev, TurnEnded):
                        self.ended += 1
                        self._open_until = ev.t + MERGE_WINDOW_S
                        self._keep(asyncio.ensure_future(self._finish(
                            self._turn, ev, self._audio(ev.speech_end + TAIL_S), self._pause, self._start,
                            self._continued, self.ended)))
                    elif isinstance(ev, TurnDropped):
                        if self._continued:  # a click after a pause: the ended turn is open again
                            self._open_until = ev.t + MERGE_WINDOW_S
                            self.continued.discard(self.ended)
                        else:
                            self._buf = []
                if self.judge is not None and self.judge.frame(fr.t, fr.paused, self._turn) and self.turns.in_turn:
                    self._transcribe(fr.t + FRAME_MS / 1000.0, False)  # the first words of a burst over the agent
        finally:
            for t in self._tasks:
                t.cancel()

    @property
    def holding(self) -> bool:
        """The caller resumed an ended turn and is still speaking."""
        return self._continued and self.turns.in_turn

    def commit(self, open_until: float | None = None) -> None:
        """The agent's reply is being played: the last turn is closed, new speech starts a new one; with
        `open_until` (a reply played before the longest commit wait), only speech after that time does, and the
        caller's speech before it still continues the turn (and cuts the reply as a barge-in)."""
        if self._open_until is None:
            return
        if open_until is not None and open_until < self._open_until:
            self._open_until = open_until
            return
        self._open_until = None
        self._preroll.extend(self._buf[-PREROLL_FRAMES:])

    def _begin(self, t: float) -> None:
        self._turn += 1
        self._buf = list(self._preroll)
        self._preroll.clear()
        self._t0 = t - (len(self._buf) - 1) * FRAME_MS / 1000.0
        self._start = t
        self._continued = False
        self._best, self._best_until, self._pause, self._passes = None, 0.0, None, 0

    def _resume(self) -> None:
        """The caller speaks again before the agent answered: the same turn goes on, in the same buffer."""
        self._open_until = None
        self._continued = True
        self.continued.add(self.ended)
        self._turn += 1  # results of passes over the shorter audio no longer count (but stay usable as hints)
        self._pause = None

    def _audio(self, until: float) -> bytes:
        pcm = b"".join(self._buf)
        n = int(max(0.0, until - self._t0) * SAMPLE_RATE) * 2
        return pcm[:n]

    def _keep(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _transcribe(self, until: float, at_pause: bool) -> None:
        turn, pcm = self._turn, self._audio(until)
        task = asyncio.ensure_future(self._pass(turn, pcm, until, at_pause))
        self._keep(task)
        if at_pause:
            self._pause = (until, task)

    async def _pass(self, turn: int, pcm: bytes, until: float, final: bool) -> _Pass:
        self._passes += 1
        try:
            result, timing = await self.asr.transcribe_timed(self.call.call_id, pcm16_to_float(pcm), final,
                                                             self._best)
        except AsrError:
            if final:
                raise
            return None, None  # a failed partial only costs its hint; the final pass reports the error
        trace("asr_pass", final=final, audio_s=round(len(pcm) / 2 / SAMPLE_RATE, 2), ran=result is not None,
              **timing.ms())
        if result is not None and until >= self._best_until:
            self._best, self._best_until = result, until  # also a good hint for a continued turn
            if turn == self._turn:
                self.turns.transcript(result.text, until, result.confidence)
        if result is not None and self.judge is not None:
            verdict = self.judge.words(result.text, until, turn)
            if verdict is not None:
                trace("barge_in_words", verdict=verdict, words=len(words_of(result.text)), final=final)
                self.call.barge_in_verdict(verdict == "backchannel")
        return result, timing

    async def _finish(self, turn: int, ev: TurnEnded, pcm: bytes,
                      pause: tuple[float, asyncio.Task[_Pass]] | None, start: float, continued: bool,
                      seq: int) -> None:
        until = ev.speech_end + TAIL_S
        result: Transcript | None = None
        timing: PassTiming | None = None
        error = ""
        try:
            if pause is not None and pause[0] >= until - 1e-6:
                result, timing = await pause[1]
            if result is None:
                result, timing = await self._pass(turn, pcm, until, True)
        except AsrError as e:
            error = str(e)
        if result is None:
            result = Transcript("", "", 0.0, True, len(pcm) / 2 / SAMPLE_RATE)
        self.heard.put_nowait(HeardTurn(result, pcm, start, ev.speech_end, ev.t, time.monotonic(), self._passes,
                                        seq, continued, error, timing))
