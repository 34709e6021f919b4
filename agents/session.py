"""CallSession: drives one agent on one call, owning playout, barge-in outcomes, timers and hang-up.

It lives on the asyncio loop. Media events arrive from the clock thread through `loop.call_soon_threadsafe`; call
actions (hang up, transfer, DTMF) go out through a `CallActions` the transport provides. A backend only sees the
`CallControl` methods below, so every transport and every backend get barge-in and timeouts for free.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agents.base import (
    Agent,
    AgentEvent,
    AgentFactory,
    BargeIn,
    CallerAudio,
    CallerSpeech,
    Dtmf,
    Handover,
    HungUp,
    Played,
    TransferFailed,
)
from agents.cost import Meter
from agents.eventlog import bind_call
from agents.redact import redact, redact_fields
from agents.speech.tts import PromptCache
from agents.spend import SpendGuard
from media.events import (
    BargeInConfirmed,
    BargeInPaused,
    BargeInResumed,
    MediaEvent,
    PlayoutFinished,
    PlayoutFlushed,
    PlayoutStarted,
    SpeechStarted,
    SpeechStopped,
)
from media.pipeline import CallMedia
from media.resample import resample


class CallActions(Protocol):
    """What the transport does for the session; each returns at once (the work happens on the SIP side)."""

    def hangup(self) -> None: ...

    def transfer(self, uri: str, attended: bool = False) -> None: ...

    def send_dtmf(self, digits: str) -> None: ...


class Log(Protocol):
    def __call__(self, name: str, **fields: object) -> None: ...


@dataclass(frozen=True)
class SessionTimeouts:
    max_call_s: float = 3600.0
    silence_reprompt_s: float = 10.0
    silence_hangup_s: float = 20.0
    reprompt_text: str = "Are you still there?"
    goodbye_text: str = "I have not heard anything, so I will hang up now. Goodbye."


class TakesOver(Protocol):
    """A factory whose agents can take over a call another backend began (the cascaded one)."""

    def create(self, handover: Handover | None = None) -> Agent: ...


@dataclass(frozen=True)
class SpendWatch:
    """A call's spend cap (agents.spend) and, for `on_cap: cascade`, the cascade that takes over."""

    guard: SpendGuard
    fallback: TakesOver | None = None


@dataclass(frozen=True)
class Announcement:
    """Played before the agent starts (consent, AI disclosure). With `consent_key`, the caller must press it (during
    or up to `timeout_s` after the announcement), or the call ends as `no_consent`."""

    text: str
    voice: str | None = None
    consent_key: str | None = None
    timeout_s: float = 8.0
    early_media: bool = False
    """Played before the call is answered: the session's `on_announced` answers it."""


@dataclass
class CallRecord:
    barge_ins: int = 0
    resumed: int = 0
    paused_ms: list[float] = field(default_factory=list)
    digits: str = ""
    end_reason: str = ""
    turns: list[dict[str, Any]] = field(default_factory=list)
    usage: Meter = field(default_factory=Meter)
    announcement: dict[str, Any] | None = None
    """What the announcement did: `played_ms`, and with a consent key, `consent` (true or false)."""
    transfers_refused: list[dict[str, str]] = field(default_factory=list)
    """Transfers the agent asked for and the guard refused: `target` and `reason`."""


class CallSession:
    def __init__(
        self,
        call_id: str,
        caller: str,
        called: str,
        factory: AgentFactory,
        media: CallMedia,
        actions: CallActions,
        prompts: PromptCache,
        log: Log,
        timeouts: SessionTimeouts | None = None,
        spend: SpendWatch | None = None,
        announcement: Announcement | None = None,
        transfer_guard: Callable[[str], str] | None = None,
    ) -> None:
        self.call_id = call_id
        self.caller = caller
        self.called = called
        self.trunk = ""
        """The SIP trunk the call came in on ("" for none or another transport)."""
        self.codec = ""
        """The call's codec as SIP names it (`PCMU/8000`), set by the transport before the agent starts."""
        self.sip_headers: dict[str, str] = {}
        """Identity, diversion, X- and User-to-User headers of the inbound INVITE (empty for other transports)."""
        self.factory = factory
        self.media = media
        self.actions = actions
        self.prompts = prompts
        self.log = log
        self.timeouts = timeouts or SessionTimeouts()
        self.spend = spend
        self._agent: asyncio.Task[None] | None = None
        self.announcement = announcement
        self.transfer_guard = transfer_guard
        """Why a transfer target is refused ("" when allowed); none: every target is."""
        self.secure = False
        """Secure capture: keys are masked (`x`) in the record and the log, and the recording is silent."""
        self.record = CallRecord()
        self._events: asyncio.Queue[AgentEvent] = asyncio.Queue()
        self._items = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Played]] = {}
        self._started: dict[int, float] = {}
        """When the first frame of each waiting item went out."""
        self._current_interruptible = False
        self._echo = False
        self._held = False
        self._ended = asyncio.Event()
        self._last_activity = time.monotonic()
        self.voice = "joe"
        self._audio: asyncio.Queue[CallerAudio] | None = None
        self.on_announced: Callable[[], None] | None = None
        """Called once an early-media announcement has played (the SIP side answers the call then)."""

    # -- inputs (loop thread) -----------------------------------------------------------------------------
    def on_media_event(self, ev: MediaEvent) -> None:
        if isinstance(ev, SpeechStarted):
            self._touch()
            self._events.put_nowait(CallerSpeech(True))
        elif isinstance(ev, SpeechStopped):
            self._touch()
            self._events.put_nowait(CallerSpeech(False, ev.duration_s))
        elif isinstance(ev, BargeInPaused):
            self.log("barge_in_paused", call=self.call_id, level_db=ev.level_db, threshold_db=ev.threshold_db,
                     echo=ev.echo)
        elif isinstance(ev, BargeInResumed):
            self.record.resumed += 1
            self.record.paused_ms.append(round(ev.paused_ms, 1))
            self.log("barge_in_resumed", call=self.call_id, paused_ms=round(ev.paused_ms, 1), by=ev.by)
        elif isinstance(ev, BargeInConfirmed):
            self.record.barge_ins += 1
            self.log("barge_in", call=self.call_id, reaction_ms=round((ev.t - ev.onset_t) * 1000, 1), by=ev.by)
            self._events.put_nowait(BargeIn(ev.t, ev.onset_t))
        elif isinstance(ev, PlayoutStarted):
            if ev.item in self._waiting:
                self._started[ev.item] = ev.t
        elif isinstance(ev, (PlayoutFinished, PlayoutFlushed)):
            self._touch()
            fut = self._waiting.pop(ev.item, None)
            started = self._started.pop(ev.item, None)
            if fut is not None and not fut.done():
                fut.set_result(Played(ev.played_ms, isinstance(ev, PlayoutFlushed), started))

    def on_dtmf(self, digit: str) -> None:
        self._touch()
        self.record.digits += "x" if self.secure else digit
        self.media.dtmf(time.monotonic())
        if self._current_interruptible and self.media.playout.pending:
            self.media.flush(time.monotonic())  # a key press stops an interruptible prompt
        self._events.put_nowait(Dtmf(digit))

    def on_hold(self, held: bool) -> None:
        """The caller put the call on hold or took it off: no silence re-prompt or hang-up while held (the media
        stops by itself: a held stream sends nothing, and the agent hears nothing of it)."""
        self._held = held
        self._touch()

    def on_transfer_result(self, code: int) -> None:
        self.record.end_reason = ""
        self._events.put_nowait(TransferFailed(code))

    def on_hangup(self, reason: str) -> None:
        if not self.record.end_reason:
            self.record.end_reason = reason
        self._events.put_nowait(HungUp(reason))
        for item, fut in self._waiting.items():
            if not fut.done():
                fut.set_result(Played(0, True, self._started.get(item)))
        self._waiting.clear()
        self._started.clear()
        self.media.set_tap(None)
        self._ended.set()

    def _touch(self) -> None:
        self._last_activity = time.monotonic()

    # -- CallControl --------------------------------------------------------------------------------------
    async def say(self, text: str, interruptible: bool = True, voice: str | None = None) -> Played:
        pcm = await self.prompts.render(text, voice or self.voice)
        self.log("agent_say", call=self.call_id, text=redact(text)[:120], interruptible=interruptible)
        return await self._play16(pcm, interruptible)

    async def play(self, pcm: bytes, rate: int, interruptible: bool = True) -> Played:
        return await self._play16(resample(pcm, rate), interruptible)

    async def _play16(self, pcm: bytes, interruptible: bool) -> Played:
        return await self._enqueue16(pcm, interruptible)

    def _enqueue16(self, pcm: bytes, interruptible: bool) -> asyncio.Future[Played]:
        fut: asyncio.Future[Played] = asyncio.get_running_loop().create_future()
        if self._ended.is_set():
            fut.set_result(Played(0, True))
            return fut
        item = next(self._items)
        self._waiting[item] = fut
        self._current_interruptible = interruptible
        self.media.push(pcm, item, last=True, interruptible=interruptible)
        return fut

    def enqueue(self, pcm: bytes, rate: int, interruptible: bool = True) -> Awaitable[Played]:
        return self._enqueue16(resample(pcm, rate), interruptible)

    def flush_playout(self) -> None:
        self.media.flush(time.monotonic())

    @property
    def digits(self) -> str:
        return self.record.digits

    @property
    def speaking(self) -> bool:
        return self.media.playout.pending

    def listen(self) -> Awaitable[CallerAudio]:
        if self._audio is None:
            queue: asyncio.Queue[CallerAudio] = asyncio.Queue()
            loop = asyncio.get_running_loop()

            detector = self.media.detector

            def tap(t: float, pcm: bytes, speech: bool) -> None:  # clock thread, right after the detector
                loop.call_soon_threadsafe(queue.put_nowait, CallerAudio(t, pcm, speech, detector.paused))

            self._audio = queue
            self.media.set_tap(tap)
        return self._audio.get()

    def record_turn(self, turn: dict[str, Any]) -> None:
        turn = redact_fields(turn)  # card numbers, security codes, ... never reach the records or the log
        self.record.turns.append(turn)
        self.log("turn", call=self.call_id, **turn)

    def meter(self, kind: str, amount: float) -> None:
        self.record.usage.add(kind, amount)

    def hold_barge_in(self, wait_ms: int | None, confirm_early: bool = True) -> None:
        self.media.hold_for_words(wait_ms, confirm_early)

    def barge_in_verdict(self, backchannel: bool) -> None:
        self.media.decide(time.monotonic(), backchannel)

    async def next_event(self, timeout: float | None = None) -> AgentEvent | None:
        try:
            async with asyncio.timeout(timeout):  # not wait_for, which on Python 3.11 can drop the task's cancellation
                return await self._events.get()
        except TimeoutError:
            return None

    def set_echo(self, on: bool) -> None:
        self._echo = on
        self.media.set_loopback(on)

    async def hangup(self, reason: str = "agent") -> None:
        if not self.record.end_reason:
            self.record.end_reason = reason
        self.actions.hangup()

    async def transfer(self, uri: str, attended: bool = False) -> bool:
        why = self.transfer_guard(uri) if self.transfer_guard is not None else ""
        if why:
            self.log("transfer_refused", call=self.call_id, target=uri, reason=why)
            self.record.transfers_refused.append({"target": uri, "reason": why})
            self._events.put_nowait(TransferFailed(403))
            return False
        self.log("agent_transfer", call=self.call_id, target=uri, attended=attended)
        self.record.end_reason = self.record.end_reason or f"transfer:{uri}"
        self.actions.transfer(uri, attended)
        return True

    async def send_dtmf(self, digits: str) -> None:
        self.actions.send_dtmf(digits)

    def secure_capture(self, on: bool) -> None:
        if on != self.secure:
            self.secure = on
            self.media.mask_recording(on)
            self.log("secure_capture", call=self.call_id, on=on)

    def pause_recording(self, paused: bool) -> bool:
        recorded = self.media.pause_recording(paused, "agent")
        self.log("recording_paused" if paused else "recording_resumed", call=self.call_id, by="agent",
                 recorded=recorded)
        return recorded

    # -- running ------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Play the announcement, then run the agent until it finishes or the call ends; enforce the call's timers
        and spend caps meanwhile."""
        bind_call(self.call_id)  # this task's events, and those of the agent's tasks, carry the call
        if self.announcement is not None and not await self._announce(self.announcement):
            return
        agent = self.factory.create()
        self._agent = asyncio.create_task(agent.run(self), name=f"agent-{self.call_id}")
        watchdog = asyncio.create_task(self._watchdog(), name=f"watchdog-{self.call_id}")
        ended = asyncio.create_task(self._ended.wait())
        try:
            while True:
                task = self._agent
                done, _ = await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
                if task is not self._agent:
                    continue  # a spend cap replaced the agent (`_on_cap`)
                if task in done and not task.cancelled() and task.exception() is not None:
                    self.log("agent_error", call=self.call_id, error=repr(task.exception()))
                    if not self._ended.is_set():
                        await self.hangup("agent_error")
                elif task in done and not self._ended.is_set():
                    await self.hangup(self.record.end_reason or "agent_done")
                break
        finally:
            for t in (self._agent, watchdog, ended):
                t.cancel()
            await asyncio.gather(self._agent, watchdog, ended, return_exceptions=True)
            if self.spend is not None:
                self.spend.guard.end(datetime.date.today())

    def _check_spend(self, call_s: float) -> None:
        if self.spend is None or self._agent is None:
            return
        reached = self.spend.guard.check(self.record.usage.usage, call_s, datetime.date.today())
        if reached is None:
            return
        cap = self.spend.guard.cap
        action = cap.on_cap if self.spend.fallback is not None else "end"
        self.log("spend_cap", call=self.call_id, scope=reached.scope, spent=reached.spent, cap=reached.cap,
                 action=action)
        self.record.turns.append({"backend": "gateway", "spend_cap": reached.scope, "spent": reached.spent,
                                  "cap": reached.cap, "action": action})
        old = self._agent
        self._agent = asyncio.create_task(self._on_cap(old, action), name=f"agent-{self.call_id}-capped")
        old.cancel()

    async def _on_cap(self, old: asyncio.Task[None], action: str) -> None:
        """The agent is stopped; say so, then hang up or go on with the fallback cascade."""
        await asyncio.gather(old, return_exceptions=True)
        self.flush_playout()
        assert self.spend is not None
        cap, fallback = self.spend.guard.cap, self.spend.fallback
        if action == "end" or fallback is None:
            await self.say(cap.wrap_up, interruptible=False)
            await self.hangup("spend_cap")
            return
        handover = Handover.from_turns(self.record.turns)
        if handover.messages:
            await self.say(cap.handover_line, interruptible=False)
        await fallback.create(handover).run(self)

    async def _announce(self, a: Announcement) -> bool:
        """Play the announcement (not interruptible) and take the caller's consent when a key is asked for; False
        when the call ended meanwhile or the caller did not consent (then it is hung up)."""
        played = await self.say(a.text, interruptible=False, voice=a.voice)
        self.record.announcement = {"played_ms": played.played_ms}
        if self._ended.is_set():
            return False
        if a.early_media and self.on_announced is not None:
            self.on_announced()
        if a.consent_key is None:
            return True
        deadline = time.monotonic() + a.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            ev = await self.next_event(left)  # keys pressed during the announcement are queued: they count
            if isinstance(ev, HungUp):
                return False
            if isinstance(ev, Dtmf) and ev.digit == a.consent_key:
                self.record.announcement["consent"] = True
                self.log("consent", call=self.call_id, given=True)
                return True
        self.record.announcement["consent"] = False
        self.log("consent", call=self.call_id, given=False, waited_s=a.timeout_s)
        await self.hangup("no_consent")
        return False

    async def _watchdog(self) -> None:
        start = time.monotonic()
        reprompted = False
        to = self.timeouts
        while not self._ended.is_set():
            self._check_spend(time.monotonic() - start)
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if now - start >= to.max_call_s:
                self.log("call_timeout", call=self.call_id, reason="max_call_length", limit_s=to.max_call_s)
                await self.hangup("max_call_length")
                return
            if self._echo or self._held or self.media.playout.pending or self.media.detector.in_speech:
                self._touch()
                reprompted = False
                continue
            idle = now - self._last_activity
            if idle >= to.silence_hangup_s:
                self.log("call_timeout", call=self.call_id, reason="caller_silence", idle_s=round(idle, 1))
                await self.say(to.goodbye_text, interruptible=False)
                await self.hangup("caller_silence")
                return
            if idle >= to.silence_reprompt_s and not reprompted:
                reprompted = True
                saved = self._last_activity
                await self.say(to.reprompt_text)
                self._last_activity = saved  # the re-prompt itself is not caller activity
