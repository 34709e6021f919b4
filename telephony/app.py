"""The gateway application: SIP stack (pjsua thread) + per-call media (clock thread) + sessions (asyncio).

Threads meet only here: the pjsua thread hands events to the loop with `call_soon_threadsafe`; sessions hand call
actions to the pjsua thread with `SipStack.submit`.
"""

from __future__ import annotations

import asyncio
import datetime
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from agents.base import AgentFactory
from agents.cascaded import CascadedFactory
from agents.registry import link_fallbacks, make_factory
from agents.session import CallActions, CallSession, Log, SessionTimeouts, SpendWatch
from agents.speech.tts import PromptCache
from agents.spend import DailySpend, SpendGuard
from media.barge_in import DetectorSettings
from media.call_progress import CallProgress, Human, Machine, MessageCue, Progress, Sit
from media.events import MediaEvent
from media.pipeline import CallMedia
from telephony.call import SipCall
from telephony.config import Config, ConfigError, DtmfMode, load_config
from telephony.control import ControlServer, ask_worker
from telephony.dial_rate import DialRate
from telephony.dtmf import DtmfDeduper
from telephony.endpoint import Refusal, SipStack
from telephony.logs import event
from telephony.outbound import AmdOptions, DialPlan, DialRefusedError, plan_dial
from telephony.pcap import CallPcap, CaptureRefusedError, PcapError
from telephony.purge_job import purge_every
from telephony.recordings import CallRecording, start_recording
from telephony.records import RecordWriter, call_record, open_record, read_records
from telephony.reload import ReloadRefusedError, agent_changes, merge
from telephony.routes import announcement_for, announcements
from telephony.sip_trace import trace_path
from telephony.transfer_guard import guard_for
from telephony.transports.servers import stream_transports
from telephony.workers import control_peers

NO_ACK_S = 5.0
"""A call whose 200 OK got no ACK within this long is hung up: its slot is one of only four (DESIGN §2), and a burst
of INVITEs that parse but are never ACKed would otherwise hold every slot while pjsip retransmits the 2xx (64×T1,
32 s)."""
END_WAIT_S = 2.0
"""How long a hung-up call's agent gets to stop (and record its last turn) before the call's record is written."""


class SipActions:
    """CallActions for a SIP call: every action runs on the pjsua thread."""

    def __init__(self, stack: SipStack, key: int, dtmf_mode: DtmfMode = "rfc4733") -> None:
        self.stack = stack
        self.key = key
        self.dtmf_mode = dtmf_mode
        """How the agent's keys go out (the route's or trunk's `dtmf_mode`)."""

    def hangup(self) -> None:
        self.stack.submit(lambda: self.stack.hangup(self.key))

    def transfer(self, uri: str, attended: bool = False) -> None:
        self.stack.submit(lambda: self.stack.transfer(self.key, uri, attended))

    def send_dtmf(self, digits: str) -> None:
        self.stack.submit(lambda: self.stack.send_dtmf(self.key, digits, self.dtmf_mode))


@dataclass
class Leg:
    """One call as the loop sees it: no SipCall reference (see SipStack.answer)."""

    key: int
    call_id: str
    session: CallSession
    agent: str
    started: float
    dtmf: DtmfDeduper
    end_reason: str = ""
    codec: str = ""
    transport: str = "sip"
    task: asyncio.Task[None] | None = None
    wall: float = field(default_factory=time.time)
    recording: CallRecording | None = None
    rtp: dict[str, object] = field(default_factory=dict)
    direction: str = "inbound"
    amd: AmdOptions | None = None
    listening: bool = False
    """Call progress is being detected (outbound, with `amd`): the agent waits for a person."""
    progress: list[dict[str, object]] = field(default_factory=list)
    """Outbound call progress decisions (media/call_progress.py), as logged."""
    rtp_local: str = ""
    """The call's local RTP address (`host:port`), once its media is up."""
    pcap: CallPcap | None = None
    """The call's pcap, when its route or the control endpoint asked for one."""
    pcap_started: asyncio.Task[None] | None = None


def detector_settings(cfg: Config) -> DetectorSettings:
    return cfg.barge_in.settings()


class Gateway:
    def __init__(self, config: Config, source: str | Path | None = None, worker: int | None = None,
                 derive: Callable[[Config], Config] | None = None) -> None:
        self.file_config = config
        """The config as the file has it; a reload merges the new file into it."""
        self.derive = derive
        """What this process runs of the file's config (a worker's part, telephony/workers.py), also on reload."""
        config = derive(config) if derive is not None else config
        self.config = config
        self.source = source
        """The config file, re-read on SIGHUP (none: no reload)."""
        self.worker = worker
        """This process's worker index under `voicegate serve --workers N` (none: the gateway alone)."""
        self.control_peers = control_peers(config, worker) if worker is not None else []
        """The other workers' control endpoints, asked for the pcap of a call this one does not hold."""
        self._reload: asyncio.Task[bool] | None = None
        self.prompts = PromptCache(disk=True)
        self.factories: dict[str, AgentFactory] = {
            name: make_factory(name, a, self.prompts, config.agents, config.prices, config.tools)
            for name, a in config.agents.items()
        }
        link_fallbacks(self.factories)
        self.stack = SipStack(config, self)
        self.stack.every(1.0, self._check_rtp)
        self.legs: dict[int, Leg] = {}
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        t = config.timeouts
        self._timeouts = SessionTimeouts(t.max_call_s, t.silence_reprompt_s, t.silence_hangup_s)
        self.records = RecordWriter(Path(config.records.path), event) if config.records.enabled else None
        self.spend = DailySpend()
        if config.spend and config.records.enabled and Path(config.records.path).exists():
            self.spend.seed(read_records(Path(config.records.path))[0], datetime.date.today())
        self._ending: set[asyncio.Task[None]] = set()
        self.transports = stream_transports(self, config)
        self.control: ControlServer | None = None
        self.dial_rate = DialRate()

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._stop.set)
        self._loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        await asyncio.to_thread(self.stack.start)
        purging = (asyncio.ensure_future(purge_every(lambda: self.config, self._stop))
                   if self.config.records.enabled and self.worker in (None, 0) else None)
        try:
            t0 = time.monotonic()
            await asyncio.gather(
                *(f.prepare() for f in self.factories.values()),
                self.prompts.prepare(self._timeouts.reprompt_text),
                self.prompts.prepare(self._timeouts.goodbye_text),
                *(self.prompts.prepare(a.text, a.voice or "joe") for a in announcements(self.config)),
            )
            self._ready.set()
            if self.config.control is not None:
                c = self.config.control
                self.control = ControlServer(self, self._loop, c.listen, c.port, c.token,
                                             pcap_only=self.worker not in (None, 0))
            for tr in self.transports:
                await tr.start()
            event("gateway_ready", port=self.config.sip.port, agents=sorted(self.factories),
                  prepare_s=round(time.monotonic() - t0, 2))
            await self._stop.wait()
            await self._drain()
        finally:
            if purging is not None:
                purging.cancel()
                await asyncio.gather(purging, return_exceptions=True)
            if self.control is not None:
                self.control.close()
            await asyncio.gather(*(tr.close() for tr in self.transports), return_exceptions=True)
            await asyncio.to_thread(self.stack.stop)
            await self._settle()
            await asyncio.gather(*(f.close() for f in self.factories.values()), return_exceptions=True)
            event("gateway_stopped")

    async def _drain(self) -> None:
        self.draining = True
        self.stack.draining = True
        grace = self.config.timeouts.shutdown_grace_s
        event("gateway_draining", calls=len(self.legs) + sum(len(tr.calls) for tr in self.transports), grace_s=grace)
        for tr in self.transports:
            tr.stop_accepting()
        deadline = time.monotonic() + grace
        while self._live() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for leg in list(self.legs.values()):
            leg.end_reason = leg.end_reason or "shutdown"
            self.stack.submit(lambda k=leg.key: self.stack.hangup(k))  # type: ignore[misc]
        for tr in self.transports:
            tr.hangup_all("shutdown")
        deadline = time.monotonic() + 3.0
        while self._live() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def _live(self) -> bool:
        return bool(self.legs) or any(tr.calls for tr in self.transports)

    async def _settle(self) -> None:
        """After the SIP stack stopped: end the calls it never reported gone, and let every call's end be recorded."""
        for key, leg in list(self.legs.items()):
            del self.legs[key]
            self._finish(leg, leg.end_reason or "shutdown", 0, "shutdown")
        if self._ending:
            await asyncio.wait(self._ending, timeout=END_WAIT_S + 1.0)

    # -- pjsua thread -------------------------------------------------------------------------------------
    def on_incoming(self, call: SipCall, called: str, caller: str) -> Refusal | None:
        if self.draining:
            event("call_refused", call=call.call_id, called=called, code=503, reason="shutting down")
            return Refusal(503, {"Retry-After": "30"})
        agent = self.config.route(called, call.trunk, call.sip_headers)
        if agent is None:
            event("call_refused", call=call.call_id, called=called, code=404, reason="no route")
            return Refusal(404)
        assert self._loop is not None
        actions = SipActions(self.stack, call.key, self.config.dtmf_mode(called, call.trunk, call.sip_headers))
        leg = self.open_leg(call.key, call.call_id, caller, called, agent, actions)
        leg.session.sip_headers = call.sip_headers
        leg.session.trunk = call.trunk
        if (route := self.config.route_for(called)) is not None and route.pcap:
            self._want_pcap(leg)
        call.media = leg.session.media
        call.listener = self
        self.legs[call.key] = leg
        early = leg.session.announcement is not None and leg.session.announcement.early_media
        if early:  # 183 with SDP now, the announcement on its media, 200 once it has played
            leg.session.on_announced = lambda: self.stack.submit(lambda: self.stack.answer(leg.key, 200))
        self._loop.call_soon_threadsafe(self._answer_when_ready, leg, 183 if early else 200)
        return None

    def _spend_watch(self, call_id: str, agent: str) -> SpendWatch | None:
        cap = self.config.spend.get(agent)
        if cap is None:
            return None
        fallback = self.factories[cap.cascade] if cap.cascade is not None else None
        assert fallback is None or isinstance(fallback, CascadedFactory)
        return SpendWatch(SpendGuard(cap, self.config.prices, self.spend, call_id, agent), fallback)

    def on_media_ready(self, call: SipCall) -> None:
        leg = self.legs.get(call.key)
        # an outbound call's early media (183) is the network's, not the callee's: its agent starts on the answer
        answered = leg is not None and (leg.direction == "inbound" or call.connected_at is not None)
        if leg is not None and not leg.codec:
            leg.codec = call.codec
        if leg is not None and not leg.rtp_local and self._loop is not None:
            leg.rtp_local = call.rtp_local
            self._loop.call_soon_threadsafe(self._start_pcap, leg)
        if leg is not None and answered and leg.task is None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._start_outbound if leg.direction == "outbound" else
                                            self._start_session, leg)

    def on_confirmed(self, call: SipCall) -> None:
        leg = self.legs.get(call.key)
        if leg is not None:
            event("call_answered", call=call.call_id, agent=leg.agent, codec=call.codec, direction=leg.direction,
                  answer_ms=round((time.monotonic() - leg.started) * 1000, 1))
            if self.records is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self._record_started, leg)
            if leg.direction == "outbound" and call.port is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self._start_outbound, leg)

    def on_dtmf(self, call: SipCall, digit: str, method: str) -> None:
        leg = self.legs.get(call.key)
        if leg is None or self._loop is None:
            return
        accepted = leg.dtmf.accept(time.monotonic(), digit, method)
        event("dtmf", call=call.call_id, digit="x" if leg.session.secure else digit, method=method,
              duplicate=not accepted)
        if accepted:
            self._loop.call_soon_threadsafe(leg.session.on_dtmf, digit)
            if leg.recording is not None:
                leg.recording.on_dtmf(digit)

    def on_disconnected(self, call: SipCall, code: int, reason: str) -> None:
        self.stack.consults.end(call.key)
        leg = self.legs.pop(call.key, None)
        if leg is None or self._loop is None:
            return
        why = leg.end_reason or f"remote_{code}"
        leg.codec = call.codec
        leg.rtp = call.rtp
        self._loop.call_soon_threadsafe(self._finish, leg, why, code, reason)

    def on_hold(self, call: SipCall, held: bool) -> None:
        leg = self.legs.get(call.key)
        if leg is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(leg.session.on_hold, held)

    def on_transfer_status(self, call: SipCall, code: int, reason: str) -> None:
        leg = self.legs.get(call.key)
        if leg is None or self._loop is None:
            return
        event("transfer_result", call=call.call_id, code=code, reason=reason)
        self.stack.consults.end(call.key)  # an attended transfer's consultation, if any, is over
        if 200 <= code < 300:
            leg.end_reason = "transferred"
            self.stack.hangup(leg.key)
        else:
            self._loop.call_soon_threadsafe(leg.session.on_transfer_result, code)

    # -- config reload -----------------------------------------------------------------------------------
    def _on_sighup(self) -> None:
        if self.source is None or not self._ready.is_set() or self.draining:
            event("config_reload_refused", file=str(self.source), errors=["not now: the gateway is starting, "
                  "stopping, or was started without a config file"])
        elif self._reload is not None and not self._reload.done():
            event("config_reload_refused", file=str(self.source), errors=["a reload is still running"])
        else:
            self._reload = asyncio.ensure_future(self.reload())

    async def reload(self) -> bool:
        """Re-read the config file: new routes, agents and trunks for the next calls; running calls keep their
        agent. An invalid file (or agents that fail to prepare) is refused and logged; the running config stays."""
        assert self.source is not None
        file = str(self.source)
        try:
            new = await asyncio.to_thread(load_config, self.source)
            merged_file, restart = merge(self.file_config, new)
        except ConfigError as e:
            event("config_reload_refused", file=file, errors=[str(i) for i in e.issues])
            return False
        except ReloadRefusedError as e:
            event("config_reload_refused", file=file, errors=e.problems)
            return False
        merged = self.derive(merged_file) if self.derive is not None else merged_file
        changed = agent_changes(self.config, merged)
        fresh = {n: make_factory(n, merged.agents[n], self.prompts, merged.agents, merged.prices) for n in changed}
        try:
            await asyncio.gather(*(f.prepare() for f in fresh.values()),
                                 *(self.prompts.prepare(a.text, a.voice or "joe") for a in announcements(merged)))
        except Exception as e:
            await asyncio.gather(*(f.close() for f in fresh.values()), return_exceptions=True)
            event("config_reload_refused", file=file, errors=[f"an agent failed to prepare: {e!r}"])
            return False
        old = self.factories
        self.factories = {n: fresh.get(n) or old[n] for n in merged.agents}
        link_fallbacks(self.factories)
        self.config, self.file_config = merged, merged_file
        for tr in self.transports:
            if hasattr(tr, "config"):
                tr.config = merged  # the stream transports route by it too
        self.stack.submit(lambda: self.stack.reconfigure(merged))
        event("config_reloaded", file=file, agents=sorted(merged.agents), new_agents=sorted(fresh),
              routes=len(merged.routes), trunks=sorted(merged.trunks), needs_restart=restart)
        retired = [f for n, f in old.items() if self.factories.get(n) is not f]
        if retired:
            asyncio.ensure_future(self._close_when_unused(retired))
        return True

    async def _close_when_unused(self, factories: list[AgentFactory]) -> None:
        """Close replaced agent factories once no running call uses them (their calls keep them until the end)."""
        def used() -> bool:
            sessions = [leg.session for leg in self.legs.values()]
            sessions += [c.leg.session for tr in self.transports for c in tr.calls]
            return any(s.factory in factories for s in sessions)

        while used() and not self._stop.is_set():
            await asyncio.sleep(1.0)
        await asyncio.gather(*(f.close() for f in factories), return_exceptions=True)

    # -- outbound calls ----------------------------------------------------------------------------------
    async def originate(self, number: str, agent: str, trunk: str | None = None, ring_s: float = 60.0,
                        amd: AmdOptions | None = None) -> DialPlan:
        """Call `number` (on a trunk) or a SIP URI and run `agent` once it answers (loop thread); returns the plan
        with the call's Call-ID once the INVITE is out. Raises DialRefusedError, logged as `dial_refused`."""
        try:
            if self.draining or not self._ready.is_set():
                raise DialRefusedError(503, "the gateway is " + ("shutting down" if self.draining else "starting"))
            plan = replace(plan_dial(self.config, number, agent, trunk), amd=amd)
            limit = self.config.trunks[plan.trunk].max_calls_per_min if plan.trunk else None
            if wait := self.dial_rate.take(plan.trunk, limit, time.monotonic()):
                raise DialRefusedError(429, f"trunk {plan.trunk} placed its {limit} calls of the last minute "
                                            f"(trunks.{plan.trunk}.max_calls_per_min); the next may go in {wait:.0f} s")
            if amd is not None and amd.message:
                await self.prompts.render(amd.message)
            loop = asyncio.get_running_loop()
            placed: asyncio.Future[DialPlan] = loop.create_future()

            def place() -> None:  # pjsua thread
                try:
                    result = self._place(plan, ring_s)
                except DialRefusedError as e:
                    loop.call_soon_threadsafe(_settle, placed, None, e)
                else:
                    loop.call_soon_threadsafe(_settle, placed, result, None)

            self.stack.submit(place)
            async with asyncio.timeout(10.0):
                return await placed
        except DialRefusedError as e:
            event("dial_refused", number=number, agent=agent, trunk=trunk, status=e.status, reason=e.message)
            raise
        except TimeoutError:
            event("dial_refused", number=number, agent=agent, trunk=trunk, status=503, reason="SIP stack busy")
            raise DialRefusedError(503, "the SIP stack did not place the call within 10 s") from None

    def _place(self, plan: DialPlan, ring_s: float) -> DialPlan:
        """Send the INVITE and open the call's leg (pjsua thread: no callback of the call runs in between)."""
        call = self.stack.dial(plan.trunk, plan.uri, lambda c: setattr(c, "listener", self))
        if call.disconnected:
            raise DialRefusedError(502, f"the call to {plan.uri} failed at once")
        mode = self.config.trunks[plan.trunk].dtmf_mode if plan.trunk else "rfc4733"
        leg = self.open_leg(call.key, call.call_id, plan.caller_id, plan.number, plan.agent,
                            SipActions(self.stack, call.key, mode))
        leg.direction = "outbound"
        leg.amd = plan.amd
        leg.session.trunk = plan.trunk
        call.media = leg.session.media
        self.legs[call.key] = leg
        event("call_outgoing", call=call.call_id, number=plan.number, uri=plan.uri, trunk=plan.trunk,
              caller_id=plan.caller_id, agent=plan.agent, ring_s=ring_s)
        assert self._loop is not None
        key = call.key  # never the SipCall itself: freed off the pjsua thread, it aborts the process
        self._loop.call_soon_threadsafe(self._loop.call_later, ring_s, self.stack.submit,
                                        lambda: self._unanswered(key))
        return replace(plan, call_id=call.call_id)

    def _start_outbound(self, leg: Leg) -> None:
        """The callee answered (loop thread): run the agent, or first find out who answered."""
        if leg.amd is None:
            self._start_session(leg)
        elif not leg.listening and leg.task is None:
            leg.listening = True
            loop, progress = asyncio.get_running_loop(), CallProgress()

            def tap(now: float, frame: bytes, speech: bool) -> None:  # clock thread
                for p in progress.process(now, np.frombuffer(frame, dtype="<i2"), speech):
                    loop.call_soon_threadsafe(self._on_progress, leg, p)

            leg.session.media.set_tap(tap)

    def _on_progress(self, leg: Leg, p: Progress) -> None:
        if leg.key not in self.legs or leg.amd is None:
            return
        fields = {k: v for k, v in vars(p).items() if k != "at"}
        leg.progress.append({"result": type(p).__name__.lower(), **fields})
        event("call_progress", call=leg.call_id, result=type(p).__name__.lower(), **fields)
        media = leg.session.media
        if isinstance(p, Human):
            media.set_tap(None)
            self._start_session(leg)
        elif isinstance(p, Sit) or (isinstance(p, Machine) and leg.amd.machine == "hangup"):
            media.set_tap(None)
            self._hangup(leg, "sit" if isinstance(p, Sit) else "machine")
        elif isinstance(p, MessageCue):
            media.set_tap(None)
            asyncio.ensure_future(self._leave_message(leg, leg.amd.message))

    async def _leave_message(self, leg: Leg, text: str) -> None:
        pcm = await self.prompts.render(text)
        leg.session.media.push(pcm, item=-1, last=True, interruptible=False)
        event("call_message", call=leg.call_id, text=text, ms=len(pcm) // 32)
        await asyncio.sleep(len(pcm) / 32000 + 0.3)
        self._hangup(leg, "machine_message")

    def _hangup(self, leg: Leg, why: str) -> None:
        leg.end_reason = why
        self.stack.submit(lambda: self.stack.hangup(leg.key))

    def _unanswered(self, key: int) -> None:
        call, leg = self.stack.calls.get(key), self.legs.get(key)
        if call is not None and leg is not None and call.connected_at is None and not call.disconnected:
            leg.end_reason = "no_answer"
            self.stack.hangup(key)

    def _check_rtp(self) -> None:
        limit = self.config.timeouts.rtp_inactivity_s
        now = time.monotonic()
        for leg in list(self.legs.values()):
            call = self.stack.calls.get(leg.key)
            if (call is not None and call.connected_at is None and call.answered_at is not None
                    and not call.disconnected and now - call.answered_at >= NO_ACK_S):
                leg.end_reason = "no_ack"
                event("call_timeout", call=call.call_id, reason="no_ack", waited_s=round(now - call.answered_at, 1))
                self.stack.release_unacked(leg.key)
                continue
            if call is None or call.connected_at is None or call.disconnected:
                continue
            idle = call.rtp_idle_s(now)
            if idle >= limit:
                leg.end_reason = "rtp_timeout"
                event("call_timeout", call=call.call_id, reason="rtp_timeout", idle_s=round(idle, 1))
                self.stack.hangup(leg.key)

    # -- any transport ------------------------------------------------------------------------------------
    def open_leg(self, key: int, call_id: str, caller: str, called: str, agent: str, actions: CallActions,
                 transport: str = "sip", observe: Callable[[MediaEvent], None] | None = None,
                 log: Log = event) -> Leg:
        """Media and session for one call to `agent`. Media events reach the session on the loop (they may come
        from any thread); `observe`, when given, sees each one first, on the thread that caused it. The session
        logs through `log` (a transport may show its call's events to the caller too)."""
        assert self._loop is not None
        loop = self._loop
        factory = self.factories[agent]
        leg_ref: list[Leg] = []

        def emit(ev: MediaEvent) -> None:
            if observe is not None:
                observe(ev)
            loop.call_soon_threadsafe(leg_ref[0].session.on_media_event, ev)

        media = CallMedia(
            emit,
            detector_settings(self.config),
            vad_aggressiveness=self.config.barge_in.vad_aggressiveness,
            barge_in=self.config.barge_in.enabled and factory.barge_in,
        )
        session = CallSession(call_id, caller, called, factory, media, actions, self.prompts, log, self._timeouts,
                              self._spend_watch(call_id, agent), announcement_for(self.config, called),
                              guard_for(self.config, called, agent).refusal)
        leg = Leg(key, call_id, session, agent, time.monotonic(), DtmfDeduper(), transport=transport)
        leg_ref.append(leg)
        leg.recording = start_recording(self.config, called, call_id, media, loop, event)
        return leg

    def start_leg(self, leg: Leg) -> None:
        """Run the leg's agent (loop thread), once; its record row is in progress from here."""
        self._record_started(leg)
        self._start_session(leg)

    def finish_leg(self, leg: Leg, why: str, code: int = 0, reason: str = "") -> None:
        """The call is gone (loop thread): stop the agent, then log `call_end` and write the call record."""
        self._finish(leg, why, code, reason)

    # -- loop thread --------------------------------------------------------------------------------------
    def _answer_when_ready(self, leg: Leg, code: int = 200) -> None:
        async def answer() -> None:
            await self._ready.wait()
            self.stack.submit(lambda: self.stack.answer(leg.key, code))

        asyncio.ensure_future(answer())

    def _start_session(self, leg: Leg) -> None:
        if leg.task is None:
            leg.session.codec = leg.codec  # an S2S agent chooses its audio format by it
            leg.task = asyncio.ensure_future(leg.session.run())

    def _finish(self, leg: Leg, why: str, code: int, reason: str) -> None:
        if not leg.session.record.end_reason:
            leg.session.record.end_reason = why
        leg.session.on_hangup(why)
        task = asyncio.ensure_future(self._end(leg, code, reason, round(time.monotonic() - leg.started, 2)))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    def _record_started(self, leg: Leg) -> None:
        """The call's in-progress row (loop thread), so that a worker killed mid-call leaves a record behind."""
        if self.records is not None:
            self.records.start(open_record(leg.call_id, leg.wall, leg.session.caller, leg.session.called, leg.agent,
                                           self.config.agents[leg.agent].type))

    async def _end(self, leg: Leg, code: int, reason: str, duration_s: float) -> None:
        """Once the agent has stopped (its last turn and usage count): log `call_end` and append the call record."""
        if leg.task is not None:
            await asyncio.wait({leg.task}, timeout=END_WAIT_S)
        s = leg.session
        rec, st = s.record, s.media.stats
        end = dict(call=leg.call_id, agent=leg.agent, reason=rec.end_reason, sip_code=code, sip_reason=reason,
                   duration_s=duration_s, codec=leg.codec, barge_ins=rec.barge_ins, resumed=rec.resumed,
                   paused_ms=rec.paused_ms, digits=rec.digits, frames_in=st.frames_in, frames_out=st.frames_out,
                   speech_frames_out=st.speech_frames_out,
                   turns=rec.turns, transport=leg.transport, **st.tick_percentiles(), trunk=s.trunk,
                   sip_headers=s.sip_headers, direction=leg.direction)
        if leg.rtp:
            end["rtp"] = leg.rtp
        if rec.announcement is not None:
            end["announcement"] = rec.announcement
        if rec.transfers_refused:
            end["transfers_refused"] = rec.transfers_refused
        if leg.progress:
            end["progress"] = leg.progress
        if leg.recording is not None:
            end.update(leg.recording.close(rec.turns))
        if leg.pcap is not None:
            end.update(await self._finish_pcap(leg))
        if self.config.records.sip_trace and (trace := trace_path(self.config.records.sip_trace_path,
                                                                  leg.call_id)).exists():
            end["sip_trace"] = str(trace)
        event("call_end", **end)
        if self.records is not None:
            self.records.write(call_record(end, leg.wall, s.caller, s.called, self.config.agents[leg.agent].type,
                                           rec.usage.usage, self.config.prices))

    # -- pcap on demand (telephony/pcap.py) ----------------------------------------------------------------
    async def capture(self, call_id: str) -> str:
        """Write a live call's SIP and RTP to a pcap at its end (loop thread; the control endpoint's request);
        returns the file's path. Raises CaptureRefusedError."""
        if not self.config.records.sip_trace:
            raise CaptureRefusedError(409, "pcap needs records.sip_trace: true (its SIP messages come from the trace)")
        leg = next((leg for leg in list(self.legs.values()) if leg.call_id == call_id), None)
        if leg is None and self.control_peers:
            return await self._capture_on_peers(call_id)
        if leg is None:
            raise CaptureRefusedError(404, f"no live SIP call with Call-ID {call_id!r}")
        pcap = self._want_pcap(leg)
        self._start_pcap(leg)
        return str(pcap.path)

    async def _capture_on_peers(self, call_id: str) -> str:
        """Worker 0: ask the other workers for the call's pcap; the first that holds the call answers 202."""
        assert self.config.control is not None
        silent = []
        for index, port in self.control_peers:
            try:
                status, body = await asyncio.to_thread(ask_worker, port, call_id, self.config.control.token)
            except OSError as e:
                silent.append(f"worker {index} (127.0.0.1:{port}) did not answer: {getattr(e, 'reason', e)}")
                continue
            if status == 202 and isinstance(body.get("pcap"), str):
                event("pcap_forwarded", call=call_id, held_by=index)
                return str(body["pcap"])
            if status != 404:
                raise CaptureRefusedError(status, f"worker {index}: {body.get('error', status)}")
        workers = len(self.control_peers) + 1
        if silent:
            raise CaptureRefusedError(503, f"no live SIP call with Call-ID {call_id!r} on the workers that answered; "
                                           + "; ".join(silent))
        raise CaptureRefusedError(404, f"no live SIP call with Call-ID {call_id!r} on any of the {workers} workers")

    def _want_pcap(self, leg: Leg) -> CallPcap:
        if leg.pcap is None:
            trace = trace_path(self.config.records.sip_trace_path, leg.call_id)
            leg.pcap = CallPcap(Path(self.config.records.pcap_path), trace)
            event("pcap_requested", call=leg.call_id, path=str(leg.pcap.path))
        return leg.pcap

    def _start_pcap(self, leg: Leg) -> None:
        """Start capturing the call's RTP once it is wanted and the media address is known (loop thread)."""
        if leg.pcap is None or leg.pcap_started is not None or not leg.rtp_local:
            return
        pcap, local = leg.pcap, leg.rtp_local

        async def start() -> None:
            try:
                await asyncio.to_thread(pcap.start, local)
            except PcapError as e:
                event("pcap_error", call=leg.call_id, error=str(e))
            else:
                event("pcap_started", call=leg.call_id, rtp=local)

        leg.pcap_started = asyncio.ensure_future(start())

    async def _finish_pcap(self, leg: Leg) -> dict[str, object]:
        assert leg.pcap is not None
        if leg.pcap_started is not None:
            await leg.pcap_started
        sip = self.config.sip
        try:
            return await asyncio.to_thread(leg.pcap.finish, sip.listen, sip.port)
        except (PcapError, OSError, ValueError) as e:  # ValueError: an address in the trace that is not an IP
            event("pcap_error", call=leg.call_id, error=str(e))
            return {}


def _settle(fut: asyncio.Future[DialPlan], result: DialPlan | None, error: DialRefusedError | None) -> None:
    if fut.done():  # the caller gave up waiting
        return
    if error is not None:
        fut.set_exception(error)
    else:
        assert result is not None
        fut.set_result(result)
