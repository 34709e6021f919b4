"""Caller speech and barge-in detection: a sans-IO state machine fed one inbound frame per tick.

Written here because no library decides barge-in: VAD libraries say "speech", not "the caller talks over the
agent and it is not our own echo, a key tone or a backchannel". The decision has three steps:

1. onset: `onset_frames` consecutive frames that the VAD calls speech, above the tracked noise floor, above the
   echo we expect from what we played in the last `echo_window_ms`, and not a pure tone -> `BargeInPaused` (the
   caller of `process` pauses playout in the same tick);
2. confirm: `confirm_ms` of speech since onset -> `BargeInConfirmed` (flush playout, cancel the agent's reply);
3. otherwise, `resume_ms` of non-speech -> `BargeInResumed` (playout continues where it paused).

An agent that hears words (an ASR) decides too (`hold_for_words`, `decide`): a pause that reaches `confirm_ms` then
stays paused up to `wait_ms` more for the burst's transcript, which resumes it (a backchannel) or confirms it at once
(anything else; also after a resume by duration, unless words may not confirm before `confirm_ms`); with no verdict
by then, the duration confirms it.

Every onset while the agent talks is first checked against the second before it (`EchoPath.explains_onset`): when
that second (but its last frame) follows what we played at a delay other than the known path's, attenuated, and the
onset stays within `echo_margin_db` of the echo expected there, it is our own audio (an echo path not known yet,
taken for none, or moved by jitter buffers) and does not pause; its frames then teach the path. An onset while no
echo is known is then checked against the recent pauses: when the bursts since the first of them are our own audio
coming back (`EchoPath.explain_burst`: an echo that started mid-call, which the path learnt from quiet frames only
could not know), the path is taken from them and the onset does not pause; speech where that path expects no echo
refutes it. (Resuming a pause early on the same test resumed a real barge-in on the wire: the "s" of
"Sorry" and the silence after it fitted the agent's audio by chance.)

Echo: once `EchoPath` knows the leg's delay and loss (about a second into our speech), caller speech must stand
`echo_margin_db` above the echo expected of the frames we played that long ago; a leg with no echo leaves only
the noise floor. Until then the detector assumes the worst over the last `echo_window_ms`: the loudest frame we
played plus a decaying peak of (inbound - that frame) over frames without caller speech, starting at
`initial_echo_gain_db`. The noise floor is the quietest of the last `noise_window_frames` frames without caller
speech (minimum statistics). Every threshold is a `DetectorSettings` field (the config's `barge_in` section); the
defaults are what the labelled clip set (tests/clipset.py) was tuned and measured with.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from media.echo_path import EchoPath, EchoPathSettings
from media.events import BargeInConfirmed, BargeInPaused, BargeInResumed, MediaEvent, SpeechStarted, SpeechStopped
from media.frames import FLOOR_DBFS, FRAME_MS
from media.tones import ToneDetector, ToneSettings


@dataclass(frozen=True)
class DetectorSettings:
    onset_frames: int = 2
    """Consecutive 20 ms caller-speech frames that pause playout (in the tick of the last one)."""
    confirm_ms: int = 600
    """Caller speech since the onset that confirms the barge-in (flush, cancel the reply)."""
    resume_ms: int = 300
    """Silence after a pause that resumes playout where it paused."""
    echo_margin_db: float = 6.0
    """How far (dB) caller speech must stand above the echo expected of what we played."""
    noise_margin_db: float = 12.0
    """How far (dB) caller speech must stand above the tracked noise floor."""
    min_level_dbfs: float = -55.0
    """Inbound frames at or below this level (dBFS) are never caller speech."""
    echo_window_ms: int = 1000
    """Until the echo path is known, the loudest frame played this long ago bounds the echo expected now (as long as
    the longest delay `EchoPath` looks for: 500 ms let an 800 ms echo of a loud start through)."""
    speech_hangover_ms: int = 300
    """Silence that ends the caller's speech (`SpeechStopped`)."""
    dtmf_guard_ms: int = 300
    """After a key press, inbound sound this long is never speech (and a pause resumes)."""
    noise_window_frames: int = 75
    """The noise floor is the quietest of this many 20 ms frames without caller speech (75 = 1.5 s)."""
    initial_echo_gain_db: float = -6.0
    """Until the echo path is known: the echo assumed at the start, relative to what we played (dB)."""
    echo_gain_floor_db: float = -40.0
    """... the least echo that estimate may fall to (dB)."""
    echo_gain_decay_db: float = 0.1
    """Per frame while we play: how fast the echo estimate falls when the leg stops returning our audio."""
    echo_gain_rise_db: float = 1.0
    """Per frame: the most the echo estimate may rise, so a quiet start of caller speech cannot ratchet it up."""
    ref_active_dbfs: float = -45.0
    """Played audio below this level teaches nothing about the echo path."""
    echo_burst_window_ms: int = 1500
    """Pauses that begin within this long of the first one are looked at together (a short echo delay leaves only
    a few frames of echo per pause)."""
    echo: EchoPathSettings = field(default_factory=EchoPathSettings)
    """The echo path estimate's own thresholds (media/echo_path.py)."""
    tones: ToneSettings = field(default_factory=ToneSettings)
    """The tone rejector's thresholds (media/tones.py)."""


class BargeInDetector:
    """Feed `played()` with every outbound frame's level and `process()` with every inbound frame."""

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.s = settings or DetectorSettings()
        self._ref: deque[float] = deque(maxlen=max(1, self.s.echo_window_ms // FRAME_MS))
        self.noise_floor = -70.0
        self._levels: deque[float] = deque(maxlen=self.s.noise_window_frames)
        self.echo_gain_db = self.s.initial_echo_gain_db
        self._run = 0
        self._run_start = 0.0
        self._quiet_ms = 0
        self.in_speech = False
        self.candidate = False
        """Whether the last inbound frame counted as caller speech (VAD, above the noise and echo threshold)."""
        self._speech_start = 0.0
        self.paused = False
        self._onset_t = 0.0
        self._pause_t = 0.0
        self._speech_ms = 0
        self._dtmf_until = -1.0
        self._bursts_t = -1e9
        """Onset of the first of the recent pauses, whose frames `EchoPath.explain_burst` looks at together."""
        self._words_wait_ms: int | None = None
        self._words_early = True
        self._held_until: float | None = None
        """While set, the pause outlasted `confirm_ms` and waits for words until then."""
        self._words_interrupt = False
        """Words that are no backchannel came before `confirm_ms` (without `confirm_early`)."""
        self._words_resumed = False
        """The last pause was resumed by words."""
        self.echo = EchoPath(self.s.echo)
        self.tones = ToneDetector(self.s.tones)
        self._played_now = FLOOR_DBFS
        self._judged: tuple[int, int] | None = None
        """The lag range of the known echo path that set this frame's threshold (None: none known)."""

    def played(self, level_db: float) -> None:
        """Level of the frame sent to the caller this tick (FLOOR_DBFS for silence)."""
        self._ref.append(level_db)
        self._played_now = level_db

    def hold_for_words(self, wait_ms: int | None, confirm_early: bool = True) -> None:
        """An agent that hears words (`decide`): a pause that reaches `confirm_ms` waits up to `wait_ms` more for
        them before its duration confirms it; None: duration alone (the default). With `confirm_early` False, words
        that are no backchannel confirm no sooner than `confirm_ms` (a shorter burst resumes by its duration)."""
        self._words_wait_ms = wait_ms
        self._words_early = confirm_early

    def decide(self, now: float, backchannel: bool) -> list[MediaEvent]:
        """The words of the burst that paused playout: a backchannel resumes the pause (nothing when not paused);
        anything else confirms the barge-in at once, also when its pause already resumed (by its duration, or by
        words: "yeah" of "yeah, but ..."); without `confirm_early`, only once the burst reaches `confirm_ms` or its
        pause was resumed by words."""
        if backchannel:
            if not self.paused:
                return []
            self.paused, self._held_until, self._words_resumed = False, None, True
            return [BargeInResumed(now, (now - self._pause_t) * 1000.0, by="words")]
        if not (self._words_early or self._words_resumed or self._held_until is not None):
            self._words_interrupt = self.paused  # confirmed when the burst reaches confirm_ms
            return []
        self.paused, self._held_until = False, None
        return [BargeInConfirmed(now, self._onset_t, by="words")]

    def note_dtmf(self, now: float) -> None:
        """A key was pressed: tones around it are never speech."""
        self._dtmf_until = now + self.s.dtmf_guard_ms / 1000.0

    @property
    def echo_ref_db(self) -> float:
        return max(self._ref) if self._ref else FLOOR_DBFS

    def threshold_db(self) -> float:
        """Level an inbound frame must exceed to count as caller speech now."""
        t = max(self.s.min_level_dbfs, self.noise_floor + self.s.noise_margin_db)
        predicted = self.echo.predicted_db(self._played_now)
        if predicted is not None:
            return max(t, predicted + self.s.echo_margin_db)
        ref = self.echo_ref_db  # echo path not known yet: assume the worst over the whole window
        if ref > FLOOR_DBFS:
            t = max(t, ref + self.echo_gain_db + self.s.echo_margin_db)
        return t

    def process(
        self, now: float, samples: np.ndarray, level_db: float, vad_speech: bool, agent_speaking: bool
    ) -> list[MediaEvent]:
        """One inbound frame at `now` (its start time); `agent_speaking`: agent audio is queued for the caller."""
        threshold = self.threshold_db()
        self._judged = self.echo.lag_range if self.echo.state == "echo" else None
        loud_speech = vad_speech and level_db > threshold and now >= self._dtmf_until
        # fed every frame (it compares with the previous one); its spectrum is taken only when it can matter
        tone = self.tones.process(samples, level_db, needed=loud_speech)
        candidate = loud_speech and not tone
        if candidate and self.echo.provisional and not self.echo.expects_echo(self._played_now):
            self.echo.refute()  # a path taken from bursts, but this sound came where it expects no echo: a person
        self._track(level_db, candidate)
        self.candidate = candidate
        events: list[MediaEvent] = []
        if candidate:
            if self._run == 0:
                self._run_start = now
            self._run += 1
            self._quiet_ms = 0
        else:
            self._run = 0
            self._quiet_ms += FRAME_MS

        if not self.in_speech and self._run >= self.s.onset_frames:
            if agent_speaking and not self.paused and self._own_echo(now):
                self._run = 0  # our own audio coming back, recognised from the recent pauses: not the caller
            else:
                self.in_speech = True
                self._speech_start = self._run_start
                events.append(SpeechStarted(self._run_start))
            if self.in_speech and agent_speaking and not self.paused:
                self.paused = True
                self._held_until, self._words_interrupt, self._words_resumed = None, False, False
                self._onset_t = self._run_start
                self._pause_t = now
                self._speech_ms = self._run * FRAME_MS
                e = self.echo
                events.append(BargeInPaused(now, round(level_db, 1), round(threshold, 1),
                                            f"{e.state} lag={e.lag} loss={e.loss_db:.1f} corr={e.corr:.2f}"))
        elif self.paused and candidate:
            self._speech_ms += FRAME_MS

        if self.paused:
            held = self._held_until
            if held is None and self._words_wait_ms is not None and self._speech_ms >= self.s.confirm_ms:
                held = self._held_until = now + (0.0 if self._words_interrupt else self._words_wait_ms / 1000.0)
            if held is not None:
                if now >= held - 1e-9:  # no words came in time (or they came early): the duration decides
                    self.paused, self._held_until = False, None
                    events.append(BargeInConfirmed(now, self._onset_t, "words" if self._words_interrupt
                                                   else "duration"))
            elif self._speech_ms >= self.s.confirm_ms:
                self.paused = False
                events.append(BargeInConfirmed(now, self._onset_t))
            elif self._quiet_ms >= self.s.resume_ms or now < self._dtmf_until:
                self.paused = False
                events.append(BargeInResumed(now, (now - self._pause_t) * 1000.0))

        if self.in_speech and self._quiet_ms >= self.s.speech_hangover_ms:
            self.in_speech = False
            end = now - self._quiet_ms / 1000.0 + FRAME_MS / 1000.0
            events.append(SpeechStopped(end, end - self._speech_start))
        return events

    def _own_echo(self, now: float) -> bool:
        """Whether the inbound frames since the first of the recent pauses' onsets (this run's, if none is recent)
        are the echo of what we played (`EchoPath.explain_burst`, which then knows the path); only while no echo is
        known (a known one already sets the threshold)."""
        if now - self._bursts_t > self.s.echo_burst_window_ms / 1000.0:
            self._bursts_t = self._run_start
        if self.echo.explains_onset(self._run, self.s.echo_margin_db, self._judged):
            self.echo.learn_last(self._run)
            return True
        if self.echo.state == "echo":
            return False
        frames = round((now - self._bursts_t) * 1000) // FRAME_MS + 1
        return self.echo.explain_burst(frames) is not None

    def _track(self, level_db: float, candidate: bool) -> None:
        # minimum statistics over the last `noise_window_frames` frames without caller speech: speech and echo have gaps
        if not (self.in_speech or self.paused):
            self._levels.append(level_db)
            self.noise_floor = min(self._levels)
        ref = self.echo_ref_db
        # learn the echo path only while the caller is silent, or the caller's own voice would teach it
        quiet_caller = not (candidate or self.in_speech or self.paused or self._run)
        self.echo.push(self._played_now, level_db, quiet_caller)
        if ref > self.s.ref_active_dbfs and quiet_caller:
            observed = min(0.0, level_db - ref, self.echo_gain_db + self.s.echo_gain_rise_db)
            decayed = max(self.s.echo_gain_floor_db, self.echo_gain_db - self.s.echo_gain_decay_db)
            self.echo_gain_db = max(observed, decayed)
