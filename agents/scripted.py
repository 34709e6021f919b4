"""The scripted agent: a YAML flow of nodes, each a list of steps (say, play, collect, branch, goto, transfer,
hangup, echo, pause). Static prompts are rendered once, before the first call is answered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from urllib.parse import quote

from agents.base import Agent, AgentFactory, CallControl, Dtmf, HungUp, TransferFailed
from agents.config import (
    BranchStep,
    CollectStep,
    EchoStep,
    GotoStep,
    HangupStep,
    PauseStep,
    PlayStep,
    SayStep,
    ScriptedAgentConfig,
    TransferStep,
)
from agents.speech.tts import PromptCache
from media.frames import SAMPLE_RATE
from media.wavfile import WavError, read_wav_16k


class FlowError(Exception):
    """The flow cannot go on (a missing WAV, an unknown variable): names the node and step."""


def uri_with_headers(uri: str, headers: Mapping[str, str]) -> str:
    """`uri` with `headers` as URI headers (`?name=value&...`, escaped as RFC 3261 25.1 asks)."""
    if not headers:
        return uri
    safe = "[]/?:+$"
    fields = "&".join(f"{quote(k, safe=safe)}={quote(v, safe=safe)}" for k, v in headers.items())
    return f"{uri}{'&' if '?' in uri else '?'}{fields}"


def render_text(text: str, variables: Mapping[str, str]) -> str:
    try:
        return text.format_map(variables)
    except (KeyError, IndexError, ValueError) as e:
        raise FlowError(f"prompt {text!r} uses an unknown variable: {e}") from None


def _clock_words(t: time.struct_time) -> str:
    hour = t.tm_hour % 12 or 12
    return f"{hour}:{t.tm_min:02d} {'AM' if t.tm_hour < 12 else 'PM'}"


class ScriptedAgent(Agent):
    def __init__(self, cfg: ScriptedAgentConfig) -> None:
        self.cfg = cfg

    async def run(self, call: CallControl) -> None:
        variables: dict[str, str] = {**call.sip_headers, "caller": call.caller, "called": call.called}
        node = self.cfg.start
        while True:
            nxt = await self._run_node(call, node, variables)
            if nxt is None:
                return
            node = nxt

    async def _run_node(self, call: CallControl, node: str, variables: dict[str, str]) -> str | None:
        steps = self.cfg.nodes[node]
        for i, step in enumerate(steps):
            variables["time"] = _clock_words(time.localtime())
            if any(isinstance(s, CollectStep) and s.secure for s in steps[i:i + 2]):
                call.secure_capture(True)  # from the prompt before a secure collect on: callers key over it
            if isinstance(step, SayStep):
                await call.say(render_text(step.say, variables), step.interruptible, step.lang or self.cfg.voice)
            elif isinstance(step, PlayStep):
                try:
                    pcm = read_wav_16k(step.play)
                except WavError as e:
                    raise FlowError(f"{node}[{i}]: {e}") from None
                await call.play(pcm, SAMPLE_RATE, step.interruptible)
            elif isinstance(step, CollectStep):
                try:
                    variables[step.collect] = await _collect(call, step)
                finally:
                    if step.secure:
                        call.secure_capture(False)
            elif isinstance(step, BranchStep):
                return step.cases.get(variables.get(step.branch, ""), step.default)
            elif isinstance(step, GotoStep):
                return step.goto
            elif isinstance(step, HangupStep):
                await call.hangup(step.hangup)
                return None
            elif isinstance(step, TransferStep):
                await call.transfer(uri_with_headers(step.transfer, {k: render_text(v, variables)
                                                                     for k, v in step.headers.items()}))
                if not await _transfer_failed(call, step.timeout_s):
                    return None  # transferred: the call ends on the SIP side
                # refused: the flow goes on with the next step (say sorry, go back to the menu)
            elif isinstance(step, EchoStep):
                call.set_echo(True)
                await asyncio.sleep(step.echo_s)
                call.set_echo(False)
            elif isinstance(step, PauseStep):
                await asyncio.sleep(step.pause_s)
        await call.hangup("flow_end")
        return None


async def _collect(call: CallControl, step: CollectStep) -> str:
    """Digits until max_digits, the terminator, or `timeout_s` without a key ('' when none came)."""
    digits = ""
    deadline = time.monotonic() + step.timeout_s
    while len(digits) < step.max_digits:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ev = await call.next_event(left)
        if isinstance(ev, Dtmf):
            if ev.digit == step.terminator:
                break
            digits += ev.digit
            deadline = time.monotonic() + step.timeout_s
    return digits


async def _transfer_failed(call: CallControl, timeout_s: float) -> bool:
    """Wait for the transfer's outcome: True if it failed, False once the call ended (or the wait timed out)."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        ev = await call.next_event(left)
        if isinstance(ev, TransferFailed):
            return True
        if isinstance(ev, HungUp):
            return False
    return False


class ScriptedFactory(AgentFactory):
    def __init__(self, name: str, cfg: ScriptedAgentConfig, prompts: PromptCache) -> None:
        self.name = name
        self.cfg = cfg
        self.prompts = prompts

    async def prepare(self) -> None:
        """Render every prompt with no variables, so calls start speaking at once."""
        for steps in self.cfg.nodes.values():
            for step in steps:
                if isinstance(step, SayStep) and "{" not in step.say:
                    await self.prompts.render(step.say, step.lang or self.cfg.voice)

    def create(self) -> Agent:
        return ScriptedAgent(self.cfg)
