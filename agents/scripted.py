"""The scripted agent: a YAML flow of nodes, each a list of steps (say, play, collect, branch, goto, transfer,
hangup, echo, pause, tool). Static prompts are rendered once, before the first call is answered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from urllib.parse import quote

from agents.base import Agent, AgentFactory, CallControl, Dtmf, HungUp, TransferFailed
from agents.config import (
    BranchStep,
    CollectStep,
    DtmfStep,
    EchoStep,
    EngineLoadError,
    GotoStep,
    HangupStep,
    PauseStep,
    PlayStep,
    RecordingStep,
    SayStep,
    ScriptedAgentConfig,
    ToolStep,
    TransferStep,
)
from agents.speech.tts import PromptCache, TtsError, load_voice, warm
from agents.tools import CallTools, ToolConfig, ToolResult, ToolRunner
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
    def __init__(self, cfg: ScriptedAgentConfig, tools: Mapping[str, ToolConfig] | None = None) -> None:
        self.cfg = cfg
        self.tools = dict(tools or {})
        self._calls: CallTools | None = None

    async def run(self, call: CallControl) -> None:
        variables: dict[str, str] = {**call.sip_headers, "caller": call.caller, "called": call.called}
        runner = ToolRunner(self.tools, list(self.tools)) if self.tools else None
        if runner is not None:
            self._calls = CallTools(runner, call)
            self._calls.variables = variables
            self._calls.voice = self.cfg.voice
        node = self.cfg.start
        try:
            while True:
                nxt = await self._run_node(call, node, variables)
                if nxt is None:
                    return
                node = nxt
        finally:
            if runner is not None:
                await runner.aclose()

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
                                                                     for k, v in step.headers.items()}),
                                    step.attended)
                if not await _transfer_failed(call, step.timeout_s):
                    return None  # transferred: the call ends on the SIP side
                # refused: the flow goes on with the next step (say sorry, go back to the menu)
            elif isinstance(step, EchoStep):
                call.set_echo(True)
                await asyncio.sleep(step.echo_s)
                call.set_echo(False)
            elif isinstance(step, PauseStep):
                await asyncio.sleep(step.pause_s)
            elif isinstance(step, DtmfStep):
                await call.send_dtmf(step.dtmf)
            elif isinstance(step, RecordingStep):
                call.pause_recording(step.recording == "pause")
            elif isinstance(step, ToolStep) and not await self._tool(call, step, variables) and step.on_error:
                return step.on_error
        await call.hangup("flow_end")
        return None


    async def _tool(self, call: CallControl, step: ToolStep, variables: dict[str, str]) -> bool:
        """Run the step's tool and keep its result in variables; False when it failed (after its apology)."""
        tool = self.tools.get(step.tool)
        if tool is None or self._calls is None:
            raise FlowError(f"tool step: no tool {step.tool!r} in the top-level tools")
        args = {k: render_text(v, variables) if isinstance(v, str) else v for k, v in step.args.items()}
        for k in [k for k in variables if k == step.save or k.startswith(step.save + "_")]:
            del variables[k]
        confirmed = False
        if tool.side_effects:
            await call.say(render_text(tool.confirm, variables), True, self.cfg.voice)
            confirmed = await _collect(call, CollectStep(collect="_confirm", max_digits=1, timeout_s=8.0)) == "1"
            if not confirmed:
                variables[step.save] = "cancelled"
                return True
        result = await self._calls.run(step.tool, args, confirmed=confirmed)
        if not result.ok:
            variables[step.save] = "error"
            await call.say(tool.apology, True, self.cfg.voice)
            return False
        variables.update(_flatten(step.save, result))
        return True


def _flatten(save: str, result: ToolResult) -> dict[str, str]:
    """`{save: "ok"}` and each top-level scalar field of an object result as `{save}_{field}`."""
    out = {save: "ok"}
    if isinstance(result.data, dict):
        for k, v in result.data.items():
            if v is None or isinstance(v, str | int | float | bool):
                out[f"{save}_{k}"] = "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
    return out


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
    def __init__(self, name: str, cfg: ScriptedAgentConfig, prompts: PromptCache,
                 tools: Mapping[str, ToolConfig] | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.prompts = prompts
        used = {s.tool for steps in cfg.nodes.values() for s in steps if isinstance(s, ToolStep)}
        self.tools = {n: t for n, t in (tools or {}).items() if n in used}

    async def prepare(self) -> None:
        """Render every prompt with no variables, so calls start speaking at once, and load the voices of those
        with variables (rendered per call). EngineLoadError when the agent's voice does not load."""
        try:
            await asyncio.to_thread(load_voice, self.cfg.voice)
        except TtsError as e:
            raise EngineLoadError(("agents", self.name, "voice"), str(e)) from None
        live: set[str] = set()
        for steps in self.cfg.nodes.values():
            for step in steps:
                if isinstance(step, SayStep) and "{" not in step.say:
                    await self.prompts.prepare(step.say, step.lang or self.cfg.voice)
                elif isinstance(step, SayStep):
                    live.add(step.lang or self.cfg.voice)
        if any(t.confirm for t in self.tools.values()):
            live.add(self.cfg.voice)
        await warm(live)
        for tool in self.tools.values():
            for text in (tool.filler, tool.apology):
                await self.prompts.prepare(text, self.cfg.voice)

    def create(self) -> Agent:
        return ScriptedAgent(self.cfg, self.tools)
