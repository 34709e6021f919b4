"""The script runner: a sans-IO state machine that takes what the phone observes and returns what it must do.

Every ~10 ms the driver passes an `Observation` (frame clock, agent audio heard, own speech, call state) and
carries out the returned actions. Steps finish with a `StepResult` (pass/fail, message, measurements). Barge-in
reaction is measured like the benchmark: the caller's onset (first frame within 20 dB of the utterance's peak, on the
telephone band) to the end of the last agent frame heard; an `interrupt` starts `after_ms` into the agent's talk
(its audio runs with no silence of TALK_GAP_MS), which the runner follows across steps. `expect_speech` asks the
driver to `Transcribe` the agent's utterance and waits for the driver to hand the text back through `hear()`.
`backchannel` and `expect_no_barge_in` measure the agent's stops (silences from its last audio frame until it runs 2
frames again) on the same frame clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from agents.llm import Message
from media.frames import FRAME_MS, split_frames
from telephony.simulator import measure, noise, persona
from telephony.simulator.script import (
    Backchannel,
    Dtmf,
    Echo,
    ExpectHangup,
    ExpectNoBargeIn,
    ExpectSpeech,
    ExpectSpeechArgs,
    ExpectTransfer,
    Hangup,
    Interrupt,
    Noise,
    Persona,
    Play,
    Say,
    Script,
    Speech,
    Step,
    Wait,
    WaitSilence,
    WaitSpeech,
    step_name,
)

FRAMES_PER_S = 1000 // FRAME_MS
TALK_GAP_MS = 1000
"""Agent silence this long ends its talk (as it ends an utterance for `expect_speech` by default); shorter pauses,
between sentences or for a lost packet, belong to the talk."""
QUIET_AFTER_STOP = 10
"""Frames of silence that show the agent really stopped (200 ms)."""
ASR_TIMEOUT_S = 60.0
RESUME_LISTEN_S = 4
"""A backchannel's `then_says` transcribes at most this much of what the agent says once it resumed."""


@dataclass(frozen=True)
class Observation:
    now: float
    frame: int
    """Index of the latest received frame; sent frames share the index."""
    last_audio: int
    """Last received frame with agent audio (-1: none yet)."""
    audio_run: int
    """Consecutive received frames with agent audio, up to the latest."""
    speaking: bool
    """Our own utterance is still being sent."""
    speech_start: int | None
    speech_end: int | None
    answered: bool
    ended: bool
    status: int
    refer_to: tuple[str, ...] = ()
    """Refer-To of every REFER received so far, in order."""


@dataclass(frozen=True)
class Speak:
    frames: list[bytes]


@dataclass(frozen=True)
class SendDtmf:
    digits: str
    info: bool


@dataclass(frozen=True)
class SetEcho:
    gain: float
    delay_frames: int


@dataclass(frozen=True)
class SetNoise:
    """Add this noise (16 kHz float samples, sent in a loop) to every frame the caller sends; None: stop."""

    samples: np.ndarray | None


@dataclass(frozen=True)
class HangUp:
    pass


@dataclass(frozen=True)
class Transcribe:
    """Transcribe the received frames [start, end] with `engine`, then call `ScriptRunner.hear`."""

    start: int
    end: int
    engine: str


@dataclass(frozen=True)
class AskPersona:
    """Ask the persona step's LLM for the caller's next line (`request`: the chat messages), then call
    `ScriptRunner.persona_said` with it, rendered."""

    step: Persona
    request: list[Message]


@dataclass(frozen=True)
class AskJudge:
    """Ask the persona step's endpoint whether the transcript shows the goal met (`request`: the chat messages),
    then call `ScriptRunner.judged` with the verdict."""

    step: Persona
    request: list[Message]


Action = Speak | SendDtmf | SetEcho | SetNoise | HangUp | Transcribe | AskPersona | AskJudge


@dataclass(frozen=True)
class Heard:
    """What the ASR made of an utterance; `error` when it failed."""

    text: str
    confidence: float
    asr_ms: float = 0.0
    error: str = ""


@dataclass
class StepResult:
    index: int
    name: str
    ok: bool
    message: str = ""
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    start_frame: int = 0
    end_frame: int = 0
    transcript: str | None = None
    """expect_speech: what the caller heard, as the ASR wrote it."""
    marks: dict[str, int] = field(default_factory=dict)
    """Frames of what the step measured between, by name: `caller onset` and `agent stop` (interrupt), `agent
    onset` and where its latency counts from, `keys`, a backchannel's `agent resumed`, `false barge-in N`."""


@dataclass
class _Gaps:
    """The agent's silences, from the observations of one step: each (first silent frame, frames, whether the
    caller was sending its own speech when it began). A silence ends when the agent's audio runs 2 frames again;
    a single loud frame inside it (a click) does not end it."""

    done: list[tuple[int, int, bool]] = field(default_factory=list)
    start: int | None = None
    caller_spoke: bool = False

    def see(self, o: Observation) -> None:
        if o.audio_run >= 2:
            if self.start is not None:
                run_start = o.frame - o.audio_run + 1
                self.done.append((self.start, max(0, run_start - self.start), self.caller_spoke))
                self.start = None
        elif o.audio_run == 0 and self.start is None and o.last_audio >= 0:
            self.start, self.caller_spoke = o.last_audio + 1, o.speaking

    def all(self, now_frame: int) -> list[tuple[int, int, bool]]:
        """The ended silences and the one under way (its length so far)."""
        if self.start is None:
            return self.done
        return [*self.done, (self.start, now_frame - self.start + 1, self.caller_spoke)]


@dataclass
class _Talk:
    """The agent's talk, followed on every observation: its onset frame and the last frame of its audio runs."""

    onset: int | None = None
    last: int = -1

    def see(self, o: Observation) -> None:
        if o.audio_run >= 2:
            start = o.frame - o.audio_run + 1
            if self.onset is None or (start - self.last - 1) * FRAME_MS >= TALK_GAP_MS:
                self.onset = start
            self.last = o.frame

    def onset_at(self, frame: int) -> int | None:
        """The onset of the talk under way at `frame`; None when the agent has been silent TALK_GAP_MS."""
        if self.onset is None or (frame - self.last - 1) * FRAME_MS >= TALK_GAP_MS:
            return None
        return self.onset


@dataclass
class _State:
    started: float
    start_frame: int
    phase: str = "start"
    onset: int | None = None
    talk: int | None = None
    """interrupt: the onset of the agent's talk it speaks into."""
    utter_end: int | None = None
    resumed_at: int | None = None
    latency_ms: float = 0.0
    started_asr: float = 0.0
    heard: Heard | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)
    """persona: (agent or caller, words) so far."""
    said: persona.PersonaLine | None = None
    verdict: persona.Verdict | None = None
    spoken: int = 0
    goal: bool = False
    llm_ms: float = 0.0
    gaps: _Gaps = field(default_factory=_Gaps)


class ScriptRunner:
    """Runs one script's steps on one answered call. `render` turns a Speech into 16 kHz PCM."""

    def __init__(self, script: Script, render: Callable[[Speech], bytes]) -> None:
        self.script = script
        self.results: list[StepResult] = []
        self._speech: dict[int, tuple[list[bytes], int]] = {}
        for i, step in enumerate(script.steps):
            sp = _speech_of(step)
            if sp is not None:
                pcm = render(sp)
                x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
                self._speech[i] = (split_frames(pcm), measure.onset_index(x))
        self.speech_dbfs = noise.speech_level_dbfs([b"".join(frames) for frames, _ in self._speech.values()])
        """The caller's speech level, which `noise` steps' SNR is relative to."""
        self._noise = {i: (self.speech_dbfs - step.noise.snr_db, noise.noise(self.speech_dbfs - step.noise.snr_db,
                                                                             step.noise.color, step.noise.seed))
                       for i, step in enumerate(script.steps) if isinstance(step, Noise) and step.noise != "off"}
        """Each noise step's level and samples, made before the call (pink noise takes a while)."""
        self._i = 0
        self._st: _State | None = None
        self._answer_frame: int | None = None
        self._refers_seen = 0
        """REFERs an earlier expect_transfer step already accounted for."""
        self._talk = _Talk()

    @property
    def done(self) -> bool:
        return self._i >= len(self.script.steps)

    @property
    def transcribing(self) -> bool:
        """A `Transcribe` is out and its step waits for `hear()` (even after the call ended)."""
        return self._st is not None and self._st.phase == "transcribing"

    def hear(self, heard: Heard) -> None:
        """The transcript the last `Transcribe` asked for; the step checks it on the next tick."""
        if self.transcribing:
            assert self._st is not None
            self._st.heard = heard

    @property
    def asking(self) -> bool:
        """An `AskPersona` is out and its step waits for `persona_said()`."""
        return self._st is not None and self._st.phase == "asking"

    def persona_said(self, line: persona.PersonaLine) -> None:
        """The line the last `AskPersona` asked for; the step speaks it on the next tick."""
        if self.asking:
            assert self._st is not None
            self._st.said = line

    @property
    def judging(self) -> bool:
        """An `AskJudge` is out and its step waits for `judged()` (even after the call ended)."""
        return self._st is not None and self._st.phase == "judging"

    def judged(self, verdict: persona.Verdict) -> None:
        """The verdict the last `AskJudge` asked for; the step ends with it on the next tick."""
        if self.judging:
            assert self._st is not None
            self._st.verdict = verdict

    def tick(self, o: Observation) -> list[Action]:
        if self._answer_frame is None:
            self._answer_frame = o.frame
        self._talk.see(o)
        actions: list[Action] = []
        while not self.done:
            step = self.script.steps[self._i]
            if self._st is None:
                self._st = _State(o.now, o.frame)
            before = len(self.results)
            actions += self._run(step, self._st, o)
            if len(self.results) == before:
                break  # the step waits for more observations
            self.results[-1].seconds = round(o.now - self._st.started, 3)
            self.results[-1].start_frame, self.results[-1].end_frame = self._st.start_frame, o.frame
            self._i += 1
            self._st = None
            if not self.results[-1].ok:
                self._name_keys(self.results[-1])
                self._skip_rest("an earlier step failed")
        return actions

    def _name_keys(self, failed: StepResult) -> None:
        """A step that fails after keys were sent names them: a menu without that branch shows as
        `after dtmf '9' (step 3): expected 'time' in 'Sorry, I did not get that.'`."""
        keys = next(((i, s) for i, s in reversed(list(enumerate(self.script.steps[: failed.index])))
                     if isinstance(s, Dtmf)), None)
        if keys is not None:
            failed.message = f"after dtmf {keys[1].dtmf!r} (step {keys[0] + 1}): {failed.message}"

    def abort(self, why: str) -> None:
        """The call ended or timed out: the current and remaining steps fail."""
        self._skip_rest(why)

    def _skip_rest(self, why: str) -> None:
        while not self.done:
            self._finish(False, why)
            self._i += 1

    def _finish(self, ok: bool, message: str = "", transcript: str | None = None, *,
                marks: dict[str, int] | None = None, **metrics: float) -> None:
        step = self.script.steps[self._i]
        self.results.append(StepResult(self._i, step_name(step), ok, message, 0.0, dict(metrics),
                                       transcript=transcript, marks=marks or {}))

    # -- steps --------------------------------------------------------------------------------------------
    def _run(self, step: Step, st: _State, o: Observation) -> list[Action]:
        waited = o.now - st.started
        if isinstance(step, WaitSpeech):
            if o.audio_run >= 2:
                start = o.frame - o.audio_run + 1
                self._finish(True, marks={"step start": st.start_frame, "agent onset": start},
                             latency_ms=max(0, start - st.start_frame) * FRAME_MS)
            elif waited > step.wait_speech.timeout_s:
                self._finish(False, f"no agent speech within {step.wait_speech.timeout_s} s")
            elif o.ended:
                self._finish(False, "the call ended while waiting for speech")
            return []
        if isinstance(step, WaitSilence):
            quiet_ms = (o.frame - max(o.last_audio, st.start_frame)) * FRAME_MS
            if quiet_ms >= step.wait_silence.min_s * 1000:
                self._finish(True)
            elif waited > step.wait_silence.timeout_s:
                self._finish(False, f"the agent did not pause for {step.wait_silence.min_s} s")
            elif o.ended:
                self._finish(True, "the call ended")
            return []
        if isinstance(step, (Say, Play)):
            return self._speak(st, o, step.wait)
        if isinstance(step, Dtmf):
            return self._dtmf(step, st, o)
        if isinstance(step, Echo):
            self._finish(True)
            if step.echo == "off":
                return [SetEcho(0.0, 0)]
            return [SetEcho(10 ** (step.echo.db / 20), step.echo.delay_ms // FRAME_MS)]
        if isinstance(step, Noise):
            if step.noise == "off":
                self._finish(True)
                return [SetNoise(None)]
            level, samples = self._noise[self._i]
            self._finish(True, noise_dbfs=round(level, 1))
            return [SetNoise(samples)]
        if isinstance(step, Wait):
            if waited >= step.wait:
                self._finish(True)
            return []
        if isinstance(step, Hangup):
            self._finish(True)
            return [HangUp()]
        if isinstance(step, ExpectHangup):
            if o.ended:
                self._finish(True, after_s=round(waited, 3))
            elif waited > step.expect_hangup.timeout_s:
                self._finish(False, f"the agent did not hang up within {step.expect_hangup.timeout_s} s")
            return []
        if isinstance(step, ExpectTransfer):
            return self._expect_transfer(step, o, waited)
        if isinstance(step, Interrupt):
            return self._interrupt(step, st, o)
        if isinstance(step, Backchannel):
            return self._backchannel(step, st, o)
        if isinstance(step, ExpectSpeech):
            return self._expect_speech(step, st, o)
        if isinstance(step, Persona):
            return self._persona(step, st, o)
        if isinstance(step, ExpectNoBargeIn):
            return self._expect_no_barge_in(step, st, o)
        raise AssertionError(f"unhandled step {step!r}")

    def _speak(self, st: _State, o: Observation, wait: bool) -> list[Action]:
        if st.phase == "start":
            st.phase = "speaking"
            if not wait:
                self._finish(True)
            return [Speak(self._speech[self._i][0])]
        if not o.speaking and o.speech_end is not None:
            self._finish(True)
        elif o.ended:
            self._finish(False, "the call ended while the caller spoke")
        return []

    def _dtmf(self, step: Dtmf, st: _State, o: Observation) -> list[Action]:
        """Send the keys; with `expect_reply_ms`, wait for the agent's next onset (up to a second past the bound)."""
        if st.phase == "start":
            st.phase, st.onset = "sent", o.frame
            if step.expect_reply_ms is None:
                self._finish(True)
            return [SendDtmf(step.dtmf, step.method == "info")]
        assert st.onset is not None and step.expect_reply_ms is not None
        start = o.frame - o.audio_run + 1
        if o.audio_run >= 2 and start > st.onset:
            reply = (start - st.onset) * FRAME_MS
            ok = reply <= step.expect_reply_ms
            self._finish(ok, "" if ok else f"the agent answered the keys after {reply} ms",
                         marks={"keys": st.onset, "agent onset": start}, reply_ms=reply)
        elif (o.frame - st.onset) * FRAME_MS > step.expect_reply_ms + 1000 or o.ended:
            self._finish(False, f"no agent audio within {step.expect_reply_ms + 1000:g} ms of the keys",
                         reply_ms=float("inf"))
        return []

    def _expect_transfer(self, step: ExpectTransfer, o: Observation, waited: float) -> list[Action]:
        """A REFER (new since the last expect_transfer) whose Refer-To matches; others fail the step."""
        a = step.expect_transfer
        new = o.refer_to[self._refers_seen:]
        if new:
            self._refers_seen = len(o.refer_to)
            ok = any(a.matches(uri) for uri in new)
            why = "" if ok else f"transferred to {', '.join(new)}, expected {a.to}"
            self._finish(ok, why, after_s=round(waited, 3))
        elif waited > a.timeout_s:
            self._finish(False, f"no transfer (REFER) within {a.timeout_s} s")
        elif o.ended:
            self._finish(False, "the call ended without a transfer")
        return []

    def _interrupt(self, step: Interrupt, st: _State, o: Observation) -> list[Action]:
        """Speak `after_ms` into the agent's talk (the one under way when the step starts, else its next), on a
        frame where its audio runs; pass when its audio stops within `expect_stop_ms` of the caller's onset
        (`into_talk_ms`: from the talk's onset to the caller's)."""
        a = step.interrupt
        if st.phase == "start":
            talk = self._talk.onset_at(o.frame)
            if talk is not None and (o.frame - talk) * FRAME_MS >= a.after_ms and o.audio_run >= 2:
                st.phase, st.talk = "speaking", talk
                return [Speak(self._speech[self._i][0])]
            if o.ended or o.now - st.started > a.timeout_s + a.after_ms / 1000:
                self._finish(False, f"the agent did not talk for {a.after_ms:g} ms within "
                                    f"{a.timeout_s + a.after_ms / 1000:g} s, so there was nothing to interrupt")
            return []
        if st.onset is None:
            if o.speech_start is None:
                return []
            st.onset = o.speech_start + self._speech[self._i][1]
        assert st.talk is not None
        into = (st.onset - st.talk) * FRAME_MS
        if o.frame - o.last_audio >= QUIET_AFTER_STOP and o.frame > st.onset:
            reaction = max(0, o.last_audio - st.onset + 1) * FRAME_MS
            ok = reaction <= a.expect_stop_ms
            self._finish(ok, "" if ok else f"the agent stopped {reaction} ms after the caller's onset",
                         marks={"caller onset": st.onset, "agent stop": max(st.onset, o.last_audio + 1)},
                         reaction_ms=reaction, into_talk_ms=into)
        elif (o.frame - st.onset) * FRAME_MS > a.expect_stop_ms + 1000 or o.ended:
            self._finish(False, "the agent did not stop talking", marks={"caller onset": st.onset},
                         reaction_ms=float("inf"), into_talk_ms=into)
        return []

    def _backchannel(self, step: Backchannel, st: _State, o: Observation) -> list[Action]:
        """Speak the backchannel into the agent's talk; pass when the agent's audio runs again within
        `expect_continue_s` of its end and no silence of the agent since the caller's onset was longer than
        `max_pause_ms` (`pause_ms`: the longest). A reply cancelled for a new prompt shows as a longer silence."""
        a = step.backchannel
        if st.phase == "start":
            if (o.now - st.started) * 1000 < a.after_ms:
                return []
            st.phase = "speaking"
            return [Speak(self._speech[self._i][0])]
        st.gaps.see(o)
        if st.onset is None:
            if o.speech_start is None:
                return []
            st.onset = o.speech_start + self._speech[self._i][1]
        if st.utter_end is None:
            if o.speaking or o.speech_end is None:
                return []
            st.utter_end = o.speech_end
        if o.audio_run >= 2 and o.last_audio > st.utter_end and st.resumed_at is None:
            st.resumed_at = o.frame - o.audio_run + 1
        deadline = st.utter_end + int(a.expect_continue_s * FRAMES_PER_S)
        onset = st.onset
        pause = max((n for start, n, _ in st.gaps.all(o.frame)
                     if start + n > onset and (st.resumed_at is None or start < st.resumed_at)), default=0) * FRAME_MS
        if st.resumed_at is not None:
            marks = {"caller onset": onset, "agent resumed": st.resumed_at}
            resumed = max(0, st.resumed_at - st.utter_end) * FRAME_MS
            if pause > a.max_pause_ms:
                self._finish(False, f"the agent paused {pause} ms for the backchannel (at most {a.max_pause_ms:g} ms)",
                             marks=marks, resumed_after_ms=resumed, pause_ms=pause)
            elif a.then_says:
                return self._resumed_words(step, st, o, marks, resumed, pause)
            else:
                self._finish(True, marks=marks, resumed_after_ms=resumed, pause_ms=pause)
        elif o.frame >= deadline or o.ended:
            self._finish(False, f"the agent stopped for a backchannel (silent {a.expect_continue_s} s after it)",
                         marks={"caller onset": onset}, pause_ms=pause)
        return []

    def _resumed_words(self, step: Backchannel, st: _State, o: Observation, marks: dict[str, int],
                       resumed: float, pause: float) -> list[Action]:
        """`then_says`: transcribe what the agent says from its resumption (until a second of quiet, at most
        RESUME_LISTEN_S) and check it holds words of the reply it paused."""
        a = step.backchannel
        assert st.resumed_at is not None
        if st.phase == "speaking":
            quiet = (o.frame - o.last_audio) * FRAME_MS >= 1000
            if not (quiet or o.frame - st.resumed_at >= RESUME_LISTEN_S * FRAMES_PER_S or o.ended):
                return []
            st.phase, st.started_asr = "transcribing", o.now
            return [Transcribe(st.resumed_at, o.last_audio if quiet else o.frame, a.engine)]
        h = st.heard
        if h is None:
            if o.now - st.started_asr > ASR_TIMEOUT_S:
                self._finish(False, f"no transcript from {a.engine} within {ASR_TIMEOUT_S:g} s", marks=marks,
                             resumed_after_ms=resumed, pause_ms=pause)
            return []
        why = f"ASR failed: {h.error}" if h.error else ExpectSpeechArgs(any_of=a.then_says).failure(h.text, 1.0)
        self._finish(not why, f"after the backchannel, {why}" if why else "", h.text, marks=marks,
                     resumed_after_ms=resumed, pause_ms=pause)
        return []

    def _expect_no_barge_in(self, step: ExpectNoBargeIn, st: _State, o: Observation) -> list[Action]:
        """For `for_s`, every silence of the agent's longer than `max_pause_ms` that began while the caller was
        silent is a false barge-in (`false_barge_ins`; `max_pause_ms`: the agent's longest silence meanwhile)."""
        a = step.expect_no_barge_in
        st.gaps.see(o)
        if o.now - st.started < a.for_s and not o.ended:
            return []
        silent = [(start, n) for start, n, spoke in st.gaps.all(o.frame) if not spoke and start + n > st.start_frame]
        false = [(start, n) for start, n in silent if n * FRAME_MS > a.max_pause_ms]
        longest = max((n for _, n in silent), default=0) * FRAME_MS
        marks = {f"false barge-in {k + 1}": start for k, (start, _) in enumerate(false)}
        if o.ended and o.now - st.started < a.for_s:
            self._finish(False, "the call ended while the agent should have been talking", marks=marks,
                         false_barge_ins=len(false), max_pause_ms=longest)
        elif false:
            where = ", ".join(f"{n * FRAME_MS} ms at {start * FRAME_MS / 1000:.2f} s" for start, n in false)
            self._finish(False, f"the agent's audio stopped {len(false)} time(s) while the caller was silent "
                                f"(over {a.max_pause_ms:g} ms): {where}", marks=marks,
                         false_barge_ins=len(false), max_pause_ms=longest)
        else:
            self._finish(True, false_barge_ins=0, max_pause_ms=longest)
        return []

    def _expect_speech(self, step: ExpectSpeech, st: _State, o: Observation) -> list[Action]:
        """The agent's next utterance (onset to `silence_s` of quiet), transcribed and checked."""
        a = step.expect_speech
        if st.phase == "start":
            if o.audio_run >= 2:
                st.onset = o.frame - o.audio_run + 1
                st.latency_ms = self._turn_latency(st.onset, o)
                st.phase = "utterance"
            elif o.now - st.started > a.timeout_s:
                self._finish(False, f"no agent speech within {a.timeout_s} s")
            elif o.ended:
                self._finish(False, "the call ended while waiting for speech")
            return []
        assert st.onset is not None
        if st.phase == "utterance":
            quiet = (o.frame - o.last_audio) * FRAME_MS >= a.silence_s * 1000
            long = (o.frame - st.onset + 1) * FRAME_MS >= a.max_s * 1000
            if not (quiet or long or o.ended):
                return []
            st.utter_end = o.frame if long and not quiet else o.last_audio
            st.phase, st.started_asr = "transcribing", o.now
            return [Transcribe(st.onset, st.utter_end, a.engine)]
        assert st.utter_end is not None
        h = st.heard
        if h is None:
            if o.now - st.started_asr > ASR_TIMEOUT_S:
                self._finish(False, f"no transcript from {a.engine} within {ASR_TIMEOUT_S:g} s")
            return []
        metrics = {"latency_ms": st.latency_ms, "duration_s": round((st.utter_end - st.onset + 1) * FRAME_MS / 1000, 2),
                   "confidence": h.confidence, "asr_ms": h.asr_ms}
        why = f"ASR failed: {h.error}" if h.error else a.failure(h.text, h.confidence)
        marks = {"turn from": st.onset - round(st.latency_ms / FRAME_MS), "agent onset": st.onset}
        self._finish(not why, why, h.text, marks=marks, **metrics)
        return []

    def _persona(self, step: Persona, st: _State, o: Observation) -> list[Action]:
        """Turns of: listen to the agent (onset to `silence_s` of quiet, or `timeout_s` of silence), transcribe,
        ask the LLM for the caller's line, speak it; until the LLM marks the goal reached (passed if `judge` is off
        or the judge finds it met in the transcript) or the agent says an `until` phrase (passed), or `max_turns`
        lines are spoken without either (failed)."""
        a = step.persona
        if st.phase == "judging":
            v = st.verdict
            if v is not None:
                st.llm_ms = max(st.llm_ms, v.llm_ms)
                if v.error:
                    self._persona_end(st, False, f"persona judge: {v.error}")
                elif v.met:
                    self._persona_end(st, True, "goal reached; the judge found it met in the transcript")
                else:
                    self._persona_end(st, False, f"the persona said its goal was reached, but the judge found it not "
                                                 f"met in the transcript: {a.goal}")
            return []
        if st.phase == "start":
            st.phase, st.started_asr = "listen", o.now
        if st.phase == "listen":
            if o.audio_run >= 2:
                st.onset, st.phase = o.frame - o.audio_run + 1, "utterance"
            elif o.now - st.started_asr > a.timeout_s:
                st.turns.append(("agent", ""))
                return self._ask(step, st)
            elif o.ended:
                self._persona_end(st, False, "the call ended while waiting for the agent")
            return []
        if st.phase == "utterance":
            assert st.onset is not None
            quiet = (o.frame - o.last_audio) * FRAME_MS >= a.silence_s * 1000
            if not (quiet or o.ended):
                return []
            st.utter_end, st.phase, st.heard, st.started_asr = o.last_audio, "transcribing", None, o.now
            return [Transcribe(st.onset, st.utter_end, a.engine)]
        if st.phase == "transcribing":
            h = st.heard
            if h is None:
                if o.now - st.started_asr > ASR_TIMEOUT_S:
                    self._persona_end(st, False, f"no transcript from {a.engine} within {ASR_TIMEOUT_S:g} s")
                return []
            if h.error:
                self._persona_end(st, False, f"ASR failed: {h.error}")
                return []
            st.turns.append(("agent", h.text))
            phrase = a.heard_until(h.text)
            if phrase is not None:
                self._persona_end(st, True, f"the agent said {phrase!r}")
                return []
            return self._ask(step, st)
        if st.phase == "asking":
            line = st.said
            if line is None:
                return []
            st.llm_ms = max(st.llm_ms, line.llm_ms)
            if line.error:
                self._persona_end(st, False, f"persona: {line.error}")
                return []
            if line.text:
                st.turns.append(("caller", line.text))
            st.goal = line.goal_reached
            if not st.goal and st.spoken >= a.max_turns:
                self._persona_end(st, False, f"goal not reached after {a.max_turns} lines: {a.goal}")
                return []
            if not line.text:
                if st.goal:
                    return self._goal_reached(step, st)
                else:
                    self._persona_end(st, False, "the persona's LLM gave an empty line")
                return []
            st.phase, st.spoken, st.onset = "speaking", st.spoken + 1, None
            return [Speak(split_frames(line.pcm))]
        # speaking: agent audio that starts meanwhile (an echo, a reply that overlaps) is the next utterance
        if st.onset is None and o.audio_run >= 2:
            st.onset = o.frame - o.audio_run + 1
        if not o.speaking and o.speech_end is not None:
            if st.goal:
                return self._goal_reached(step, st)
            else:
                st.phase, st.started_asr = ("listen" if st.onset is None else "utterance"), o.now
        elif o.ended:
            self._persona_end(st, False, "the call ended while the caller spoke")
        return []

    def _ask(self, step: Persona, st: _State) -> list[Action]:
        st.phase, st.said = "asking", None
        return [AskPersona(step, persona.messages(step.persona, st.turns))]

    def _goal_reached(self, step: Persona, st: _State) -> list[Action]:
        """The LLM marked the goal reached: the step passes, or, with `judge`, asks the judge."""
        if not step.persona.judge:
            self._persona_end(st, True, "goal reached")
            return []
        st.phase, st.verdict = "judging", None
        return [AskJudge(step, persona.judge_messages(step.persona, st.turns))]

    def _persona_end(self, st: _State, ok: bool, why: str) -> None:
        self._finish(ok, why, persona.transcript(st.turns), turns=st.spoken, llm_ms=st.llm_ms)

    def _turn_latency(self, onset: int, o: Observation) -> float:
        """The end of the caller's last utterance (else the answer) to the agent's onset; 0 if they overlap."""
        if o.speaking:
            return 0.0
        if o.speech_start is None:
            return max(0, onset - (self._answer_frame or 0)) * FRAME_MS
        if o.speech_end is None or o.speech_end >= onset:
            return 0.0
        return (onset - o.speech_end - 1) * FRAME_MS


def _speech_of(step: Step) -> Speech | None:
    if isinstance(step, Say):
        return Speech(say=step.say, voice=step.voice)
    if isinstance(step, Play):
        return Speech(play=step.play)
    if isinstance(step, Interrupt):
        return step.interrupt
    if isinstance(step, Backchannel):
        return step.backchannel
    return None
