"""The interface between a call and an agent backend.

A backend sees a `CallControl`: it speaks, plays audio, waits for call events and acts on the call. It never sees
RTP, SIP or frames' timing; barge-in, playout and cancellation belong to the session.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class Played:
    """How an utterance ended: `interrupted` by barge-in, a key press or hang-up, after `played_ms` were heard."""

    played_ms: int
    interrupted: bool
    started_at: float | None = None
    """Monotonic time of the media tick that sent its first frame (None: none went out)."""


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class CallerSpeech:
    """The caller started (`started=True`) or stopped speaking."""

    started: bool
    duration_s: float = 0.0


@dataclass(frozen=True)
class BargeIn:
    """The caller talked over the agent; its audio was already flushed."""

    t: float | None = None
    """When the barge-in was confirmed (the media clock, `time.monotonic()`), where known."""
    onset_t: float | None = None
    """When the caller's speech that cut in began (playout paused then), where known."""


@dataclass(frozen=True)
class HungUp:
    reason: str


@dataclass(frozen=True)
class TransferFailed:
    """The far end refused or could not complete a transfer; the call is still ours."""

    code: int


@dataclass(frozen=True)
class CallerAudio:
    """One inbound 20 ms frame (16 kHz PCM16) starting at clock time `t`; `speech`: it counted as caller speech."""

    t: float
    pcm: bytes
    speech: bool
    paused: bool = False
    """Playout is paused for the caller's speech after this frame (a barge-in not yet confirmed or resumed)."""


AgentEvent = Dtmf | CallerSpeech | BargeIn | HungUp | TransferFailed


@dataclass(frozen=True)
class ToolOutcome:
    """A business tool call an earlier backend of the call made, with the result the model was (or would have
    been) given: `arguments` and `output` as JSON text."""

    call_id: str
    name: str
    arguments: str
    output: str


@dataclass(frozen=True)
class Handover:
    """A call another backend began (agents.hybrid): its conversation so far, `(role, text)` in order, role `user`
    or `assistant`, ending with the caller's turn to answer. A backend taking over adds `note` and the messages to
    its session as context and answers at once, in place of its greeting."""

    messages: tuple[tuple[Literal["user", "assistant"], str], ...]
    note: str = ""
    tools: tuple[ToolOutcome, ...] = ()
    """The tool calls the earlier backend made, done (so the new one neither loses nor repeats them)."""

    @classmethod
    def from_turns(cls, turns: Sequence[Mapping[str, Any]], note: str = "") -> Handover:
        """The conversation in a call record's turns, whichever backend wrote them: cascaded turns keep the caller's
        words in `text` and what was heard of the reply in `heard`; Gemini Live turns the caller's in `heard` and
        the model's in `text`; OpenAI Realtime turns keep only the model's, in `text`."""
        out: list[tuple[Literal["user", "assistant"], str]] = []
        for t in turns:
            backend = t.get("backend") or t.get("engine")
            user, agent = ("text", "heard") if backend == "cascaded" else ("heard", "text")
            if backend == "openai_realtime":
                user = ""
            keys: tuple[tuple[Literal["user", "assistant"], str], ...] = (("user", user), ("assistant", agent))
            for role, key in keys:
                text = str(t.get(key) or "").strip() if key else ""
                if text:
                    out.append((role, text))
        return cls(tuple(out), note)


class CallControl(Protocol):
    call_id: str
    caller: str
    called: str
    sip_headers: dict[str, str]
    """Identity, diversion, X- and User-to-User headers of the inbound INVITE (empty on other transports)."""
    trunk: str
    """The SIP trunk the call came in on ("" for none or another transport)."""
    codec: str
    """The call's codec as SIP names it (`PCMU/8000`, `G722/16000`; a stream transport's `PCMU/8000` or `L16/16000`),
    known when the agent starts; "" when unknown."""

    @property
    def digits(self) -> str:
        """The keys the caller pressed so far (`x` for each one during a secure capture)."""
        ...

    async def say(self, text: str, interruptible: bool = True, voice: str | None = None) -> Played: ...

    async def play(self, pcm: bytes, rate: int, interruptible: bool = True) -> Played: ...

    async def next_event(self, timeout: float | None = None) -> AgentEvent | None:
        """The next call event, or None when `timeout` passes first."""
        ...

    def enqueue(self, pcm: bytes, rate: int, interruptible: bool = True) -> Awaitable[Played]:
        """Queue audio behind what is already queued, at once; the result says how it ended."""
        ...

    def flush_playout(self) -> None:
        """Drop the agent audio queued or playing at once (for a backend whose server detected the interruption);
        each dropped utterance's `Played` says interrupted."""
        ...

    @property
    def speaking(self) -> bool:
        """Agent audio is queued or playing."""
        ...

    def listen(self) -> Awaitable[CallerAudio]:
        """The next inbound frame; the first call starts the stream (frames before it are not kept)."""
        ...

    def record_turn(self, turn: dict[str, Any]) -> None:
        """Add one turn's timings and text to the call record."""
        ...

    def hold_barge_in(self, wait_ms: int | None, confirm_early: bool = True) -> None:
        """This agent hears the caller's words and gives `barge_in_verdict`s: a pause that outlasts the barge-in's
        confirm time waits up to `wait_ms` more for one; None: the duration alone decides (the default). Without
        `confirm_early`, a verdict that is no backchannel confirms no sooner than the confirm time."""
        ...

    def barge_in_verdict(self, backchannel: bool) -> None:
        """The words of the caller's speech over the agent: a backchannel resumes paused playout where it stopped;
        anything else confirms the barge-in at once (the audio is flushed, a BargeIn event follows)."""
        ...

    def meter(self, kind: str, amount: float) -> None:
        """Add usage to the call's cost record (kinds in `agents.cost`, e.g. `tts_chars`, `asr_s`)."""
        ...

    def set_echo(self, on: bool) -> None:
        """Play the caller's audio straight back (for echo tests)."""
        ...

    async def hangup(self, reason: str = "agent") -> None: ...

    async def transfer(self, uri: str, attended: bool = False) -> bool:
        """Blind transfer (REFER), or `attended`: the gateway calls the target first and REFERs the caller with
        Replaces once it answers (telephony/consult.py). False when the gateway refused the target itself (the
        toll-fraud guard), which also queues TransferFailed(403). A refusal by the far end comes later, as
        TransferFailed."""
        ...

    async def send_dtmf(self, digits: str) -> None: ...

    def secure_capture(self, on: bool) -> None:
        """While on, the caller's keys are masked in the log and the call record, and the recording is silent (a
        card number or PIN being keyed)."""
        ...

    def pause_recording(self, paused: bool) -> bool:
        """Pause the call's recording (silence on both channels from now on, e.g. while a card number is spoken) or
        resume it; the call record lists the paused stretches. False when the call is not recorded."""
        ...


class Agent(abc.ABC):
    """One instance per call, made by the agent's factory."""

    @abc.abstractmethod
    async def run(self, call: CallControl) -> None:
        """Drive the call until the agent is done (it then hangs up) or the caller hangs up (run is cancelled)."""


class AgentFactory(abc.ABC):
    """Made once per configured agent; `prepare` renders what every call needs (static prompts)."""

    name: str

    async def prepare(self) -> None:
        return None

    async def close(self) -> None:
        """Release what `prepare` started (worker processes); called once at shutdown."""
        return None

    @abc.abstractmethod
    def create(self) -> Agent: ...

    @property
    def barge_in(self) -> bool:
        """Whether the caller's speech may interrupt this agent's audio."""
        return True
