"""The hybrid agent: a call starts on the cascade and moves to a speech-to-speech agent when the router says so.

`Router` (agents.router) sees the caller ID as the call starts, then each caller turn before the cascade answers it.
On `Escalate` the cascade stops between replies, once the caller's pause has lasted the reply's commit wait
(`commit_complete_ms` or `commit_ms`, agents.cascaded; a caller who goes on talking is not cut off: the longer turn
escalates instead), and the S2S agent starts on the same call with a `Handover`: the conversation as the caller
heard it, then the triggering turn's transcript, which it answers at once. The move is one way, so the caller
hears the voice change once. A VIP caller starts on S2S, with its greeting.

Voice: `s2s_voice`, else `VOICE_MATCH` for the cascade's TTS voice, else the S2S agent's own. The table pairs piper's
`joe` (US English, adult male, mid pitch) with a male voice of each service, OpenAI `cedar` and Gemini `Charon`,
chosen from the services' descriptions, not by ear; no synthetic voice is a twin of another, so the change is audible.

Tools: the business tools of the cascade (its LLM's, or those its dialog's intents call) and of the S2S agent are
offered to both (a dialog cascade keeps its intents' own), so the caller can ask for the same lookup before and
after the move. The S2S agent is told every tool call the
cascade made, with its result (`Handover.tools`); a non-idempotent call that a barge-in left running is waited for
first, so it is neither lost nor made twice. Each tool record says which backend called it.

Call record: every turn has `backend` (`cascaded`, `openai_realtime` or `gemini_live`); cascade turns have the
router's `arousal_z` once the caller's baseline is set, and `escalation_blocked` when the budget vetoed a rule. The
escalation is a record of its own: `escalation` (the reason), `detail`, `after_turns`, `handover_ms` (from the end
of the caller's speech to the S2S agent's start), `to`, `voice`, `usd_estimate`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Literal

from agents.base import Agent, AgentEvent, AgentFactory, CallControl, CallerAudio, Handover, Played
from agents.brain import DialogBrain, LlmBrain, UserTurn
from agents.cascaded import CascadedAgent, CascadedFactory
from agents.config import CascadedAgentConfig, HybridAgentConfig
from agents.cost import Prices, s2s_per_min
from agents.gemini_live import GeminiLiveConfig, GeminiLiveFactory
from agents.listener import HeardTurn
from agents.openai_realtime import OpenAIRealtimeConfig, OpenAIRealtimeFactory
from agents.router import Escalate, Router, Stay
from agents.speech.tts import PromptCache
from agents.tools import CallTools, ToolConfig

VOICE_MATCH: dict[str, dict[str, str]] = {"joe": {"openai_realtime": "cedar", "gemini_live": "Charon"}}
"""S2S voice by cascade TTS voice and S2S agent type."""
HANDOVER_NOTE = (
    "You are taking over this phone call from an automated assistant; the conversation so far follows. "
    "Do not greet the caller again: answer their last message."
)


class _Tagged:
    """The call as the hybrid's backends see it: each turn record says which backend answered it."""

    def __init__(self, call: CallControl) -> None:
        self._call = call
        self.call_id, self.caller, self.called = call.call_id, call.caller, call.called
        self.sip_headers = call.sip_headers
        self.trunk = call.trunk
        self.codec = call.codec
        self.backend = "cascaded"
        self.note: dict[str, Any] = {}
        """Router facts for the next turn record."""

    async def say(self, text: str, interruptible: bool = True, voice: str | None = None) -> Played:
        return await self._call.say(text, interruptible, voice)

    async def play(self, pcm: bytes, rate: int, interruptible: bool = True) -> Played:
        return await self._call.play(pcm, rate, interruptible)

    async def next_event(self, timeout: float | None = None) -> AgentEvent | None:
        return await self._call.next_event(timeout)

    def enqueue(self, pcm: bytes, rate: int, interruptible: bool = True) -> Awaitable[Played]:
        return self._call.enqueue(pcm, rate, interruptible)

    def flush_playout(self) -> None:
        self._call.flush_playout()

    @property
    def digits(self) -> str:
        return self._call.digits

    @property
    def speaking(self) -> bool:
        return self._call.speaking

    def listen(self) -> Awaitable[CallerAudio]:
        return self._call.listen()

    def record_turn(self, turn: dict[str, Any]) -> None:
        if "tool" in turn and "ok" in turn:  # a tool's record: the router's note waits for the turn's own
            self._call.record_turn({"backend": self.backend, **turn})
            return
        self._call.record_turn({"backend": self.backend, **self.note, **turn})
        self.note = {}

    def meter(self, kind: str, amount: float) -> None:
        self._call.meter(kind, amount)

    def set_echo(self, on: bool) -> None:
        self._call.set_echo(on)

    async def hangup(self, reason: str = "agent") -> None:
        await self._call.hangup(reason)

    async def transfer(self, uri: str, attended: bool = False) -> bool:
        return await self._call.transfer(uri, attended)

    async def send_dtmf(self, digits: str) -> None:
        await self._call.send_dtmf(digits)

    def secure_capture(self, on: bool) -> None:
        self._call.secure_capture(on)

    def pause_recording(self, paused: bool) -> bool:
        return self._call.pause_recording(paused)

    def hold_barge_in(self, wait_ms: int | None, confirm_early: bool = True) -> None:
        self._call.hold_barge_in(wait_ms, confirm_early)

    def barge_in_verdict(self, backchannel: bool) -> None:
        self._call.barge_in_verdict(backchannel)


class _Cascade(CascadedAgent):
    """The cascade, asking the router about each turn before answering it."""

    def __init__(self, factory: CascadedFactory, router: Router, call: _Tagged) -> None:
        super().__init__(factory)
        self.router = router
        self.tagged = call
        self.escalation: Escalate | None = None
        self.trigger: HeardTurn | None = None

    async def hand_over(self, turn: UserTurn, heard: HeardTurn) -> bool:
        fallbacks = self.brain.dialog.fallbacks if isinstance(self.brain, DialogBrain) else 0
        decision = self.router.turn(turn, fallbacks, time.monotonic())
        if isinstance(decision, Stay):
            note: dict[str, Any] = {}
            if self.router.arousal_z is not None:
                note["arousal_z"] = round(self.router.arousal_z, 2)
            if decision.blocked:
                note["escalation_blocked"] = decision.blocked
            self.tagged.note = note
            return False
        if not await self._commit(heard):
            return False  # the caller went on talking: the longer turn comes next, and escalates
        self.escalation, self.trigger = decision, heard
        return True


class HybridAgent(Agent):
    def __init__(self, factory: HybridFactory) -> None:
        self.f = factory

    async def run(self, call: CallControl) -> None:
        tagged = _Tagged(call)
        router = Router(self.f.cfg.escalate_when, self.f.cfg.budget, self.f.dialog)
        start = router.start(call.caller, time.monotonic())
        handover: Handover | None = None
        after_turns, speech_end = 0, None
        if isinstance(start, Escalate):
            escalation = start
        else:
            if start.blocked:
                tagged.note = {"escalation_blocked": start.blocked}
            cascade = _Cascade(self.f.cascade, router, tagged)
            await cascade.run(tagged)
            if cascade.escalation is None or cascade.trigger is None:
                return  # the cascade ended the call (a goodbye or a transfer)
            escalation, speech_end = cascade.escalation, cascade.trigger.speech_end
            after_turns = sum(role == "user" for role, _ in cascade.transcript)
            tools = cascade.brain.tools if isinstance(cascade.brain, LlmBrain | DialogBrain) else None
            handover = await handover_from(cascade.transcript, cascade.trigger.transcript.text, tools)
        s2s = self.f.s2s
        call.record_turn({
            "backend": "hybrid", "escalation": escalation.reason, "detail": escalation.detail,
            "after_turns": after_turns,
            "handover_ms": None if speech_end is None else round((time.monotonic() - speech_end) * 1000, 1),
            "to": s2s.cfg.type, "voice": s2s.cfg.voice, "usd_estimate": escalation.usd_estimate,
        })
        tagged.backend = s2s.cfg.type
        await s2s.create(handover).run(tagged)


async def handover_from(transcript: Sequence[tuple[Literal["user", "assistant"], str]], last: str,
                        tools: CallTools | None) -> Handover:
    """The S2S agent's `Handover`: the conversation as heard, the caller's `last` turn, and the cascade's tool calls,
    once the ones a barge-in left running have finished (their records are written by then, as the cascade's)."""
    if tools is not None:
        await tools.settle()
    outcomes = tuple(tools.outcomes) if tools is not None else ()
    return Handover((*transcript, ("user", last)), HANDOVER_NOTE, outcomes)


def shared_tools(cascade: CascadedAgentConfig, s2s: OpenAIRealtimeConfig | GeminiLiveConfig
                 ) -> tuple[CascadedAgentConfig, OpenAIRealtimeConfig | GeminiLiveConfig]:
    """Both configs offering the business tools of either (the cascade's LLM only with one; a dialog cascade keeps
    the tools its intents call)."""
    own = cascade.business_tools
    names = [*own, *(n for n in s2s.tools if n not in own)]
    if cascade.llm is not None:
        cascade = cascade.model_copy(update={"tools": names})
    tools = (*s2s.tools, *(n for n in names if n not in s2s.tools))
    return cascade, s2s.model_copy(update={"tools": tools})


class HybridFactory(AgentFactory):
    def __init__(self, name: str, cfg: HybridAgentConfig, cascade: CascadedAgentConfig,
                 s2s: OpenAIRealtimeConfig | GeminiLiveConfig, prompts: PromptCache, prices: Prices | None = None,
                 tools: Mapping[str, ToolConfig] | None = None) -> None:
        self.name = name
        if cfg.budget is not None and cfg.budget.usd_per_min is None:
            rate = s2s_per_min(prices or Prices(), s2s.type)
            cfg = cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"usd_per_min": rate or None})})
        self.cfg = cfg
        cascade, s2s = shared_tools(cascade, s2s)
        self.cascade = CascadedFactory(f"{name}.cascade", cascade, tools, ("agents", name, "cascade"))
        self.dialog = cascade.dialog if cascade.llm is None else None
        voice = cfg.s2s_voice or VOICE_MATCH.get(cascade.voice, {}).get(s2s.type, s2s.voice)
        self.s2s: OpenAIRealtimeFactory | GeminiLiveFactory
        if isinstance(s2s, OpenAIRealtimeConfig):
            self.s2s = OpenAIRealtimeFactory(f"{name}.s2s", s2s.model_copy(update={"voice": voice}), prompts, tools)
        else:
            self.s2s = GeminiLiveFactory(f"{name}.s2s", s2s.model_copy(update={"voice": voice}), prompts, tools)

    async def prepare(self) -> None:
        await asyncio.gather(self.cascade.prepare(), self.s2s.prepare())

    async def close(self) -> None:
        await asyncio.gather(self.cascade.close(), self.s2s.close())

    def create(self) -> Agent:
        return HybridAgent(self)
