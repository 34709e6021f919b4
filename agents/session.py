"""CallSession: drives one agent on one call, owning playout, barge-in outcomes, timers and hang-up.

It lives on the asyncio loop. Media events arrive from the clock thread through `loop.call_soon_threadsafe`; call
actions (hang up, transfer, DTMF) go out through a `CallActions` the transport provides. A backend only sees the
`CallControl` methods below, so every transport and every backend get barge-in and timeouts for free.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agents.base import (
    AgentEvent,
    AgentFactory,
    BargeIn,
    CallerAudio,
    CallerSpeech,
    Dtmf,
    HungUp,
    Played,
    TransferFailed,
)
from agents.cost import Meter
from agents.speech.tts import PromptCache
from media.events import (
    BargeInConfirmed,
    BargeInPaused,
    BargeInResumed,
    MediaEvent,
    PlayoutFinished,
    PlayoutFlushed,
    SpeechStarted,
    SpeechStopped,
)
from media.pipeline import CallMedia
from media.resample import resample


class CallActions(Protocol):
    """What the transport does for the session; each returns at once (the work happens on the SIP side)."""

    def hangup(self) -> None: ...

    def transfer(self, uri: str) -> None: ...

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


@dataclass
class CallRecord:
    barge_ins: int = 0
    resumed: int = 0
    paused_ms: list[float] = field(default_factory=list)
    digits: str = ""
    end_reason: str = ""
    turns: list[dict[str, Any]] = field(default_factory=list)
    usage: Meter = field(default_factory=Meter)


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
    ) -> None:
        self.call_id = call_id
        self.caller = caller
        self.called = called
        self.trunk = ""
        """The SIP trunk the call came in on ("" for none or another transport)."""
        self.sip_headers: dict[str, str] = {}
        """Identity, diversion, X- and User-to-User headers of the inbound INVITE (empty for other transports)."""
        self.factory = factory
        self.media = media
        self.actions = actions
        self.prompts = prompts
        self.log = log
        self.timeouts = timeouts or SessionTimeouts()
        self.record = CallRecord()
        self._events: asyncio.Queue[AgentEvent] = asyncio.Queue()
        self._items = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Played]] = {}
        self._current_interruptible = False
        self._echo = False
        self._ended = asyncio.Event()
        self._last_activity = time.monotonic()
        self.voice = "joe"
        self._audio: asyncio.Queue[CallerAudio] | None = None

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
            self.log("barge_in_resumed", call=self.call_id, paused_ms=round(ev.paused_ms, 1))
        elif isinstance(ev, BargeInConfirmed):
            self.record.barge_ins += 1
            self.log("barge_in", call=self.call_id, reaction_ms=round((ev.t - ev.onset_t) * 1000, 1))
            self._events.put_nowait(BargeIn())
        elif isinstance(ev, (PlayoutFinished, PlayoutFlushed)):
            self._touch()
            fut = self._waiting.pop(ev.item, None)
            if fut is not None and not fut.done():
                fut.set_result(Played(ev.played_ms, isinstance(ev, PlayoutFlushed)))

    def on_dtmf(self, digit: str) -> None:
        self._touch()
        self.record.digits += digit
        self.media.dtmf(time.monotonic())
        if self._current_interruptible and self.media.playout.pending:
            self.media.flush(time.monotonic())  # a key press stops an interruptible prompt
        self._events.put_nowait(Dtmf(digit))

    def on_transfer_result(self, code: int) -> None:
        self.record.end_reason = ""
        self._events.put_nowait(TransferFailed(code))

    def on_hangup(self, reason: str) -> None:
        if not self.record.end_reason:
            self.record.end_reason = reason
        self._events.put_nowait(HungUp(reason))
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_result(Played(0, True))
        self._waiting.clear()
        self.media.set_tap(None)
        self._ended.set()

    def _touch(self) -> None:
        self._last_activity = time.monotonic()

    # -- CallControl --------------------------------------------------------------------------------------
    async def say(self, text: str, interruptible: bool = True, voice: str | None = None) -> Played:
        pcm = await self.prompts.render(text, voice or self.voice)
        self.log("agent_say", call=self.call_id, text=text[:120], interruptible=interruptible)
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
    def speaking(self) -> bool:
        return self.media.playout.pending

    def listen(self) -> Awaitable[CallerAudio]:
        if self._audio is None:
            queue: asyncio.Queue[CallerAudio] = asyncio.Queue()
            loop = asyncio.get_running_loop()

            def tap(t: float, pcm: bytes, speech: bool) -> None:  # clock thread
                loop.call_soon_threadsafe(queue.put_nowait, CallerAudio(t, pcm, speech))

            self._audio = queue
            self.media.set_tap(tap)
        return self._audio.get()

    def record_turn(self, turn: dict[str, Any]) -> None:
        self.record.turns.append(turn)
        self.log("turn", call=self.call_id, **turn)

    def meter(self, kind: str, amount: float) -> None:
        self.record.usage.add(kind, amount)

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

    async def transfer(self, uri: str) -> None:
        self.log("agent_transfer", call=self.call_id, target=uri)
        self.record.end_reason = self.record.end_reason or f"transfer:{uri}"
        self.actions.transfer(uri)

    async def send_dtmf(self, digits: str) -> None:
        self.actions.send_dtmf(digits)

    # -- running ------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run the agent until it finishes or the call ends; enforce the call's timers meanwhile."""
        agent = self.factory.create()
        task = asyncio.create_task(agent.run(self), name=f"agent-{self.call_id}")
        watchdog = asyncio.create_task(self._watchdog(), name=f"watchdog-{self.call_id}")
        ended = asyncio.create_task(self._ended.wait())
        try:
            done, _ = await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
            if task in done and task.exception() is not None:
                self.log("agent_error", call=self.call_id, error=repr(task.exception()))
                if not self._ended.is_set():
                    await self.hangup("agent_error")
            elif task in done and not self._ended.is_set():
                await self.hangup(self.record.end_reason or "agent_done")
        finally:
            for t in (task, watchdog, ended):
                t.cancel()
            await asyncio.gather(task, watchdog, ended, return_exceptions=True)

    async def _watchdog(self) -> None:
        start = time.monotonic()
        reprompted = False
        to = self.timeouts
        while not self._ended.is_set():
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if now - start >= to.max_call_s:
                self.log("call_timeout", call=self.call_id, reason="max_call_length", limit_s=to.max_call_s)
                await self.hangup("max_call_length")
                return
            if self._echo or self.media.playout.pending or self.media.detector.in_speech:
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
