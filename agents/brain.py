"""What a cascaded agent thinks with: a `Brain` turns a caller turn into reply parts (text to speak, call actions).

Two brains: `LlmBrain` (any OpenAI-compatible streaming endpoint, with tools mapped to call actions) and
`DialogBrain` (the embedded rule-based dialog, for calls with no LLM configured). The LLM brain also runs the
business tools it is given (agents.tools): their results go back to the model for its next sentences. A brain
yields parts as they come, so the first sentence is spoken while the rest is still being written; the agent cancels
the iteration on barge-in and tells the brain what the caller actually heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from agents.dialog import Dialog, Reply
from agents.eventlog import trace
from agents.llm import Conversation, Done, LlmClient, LlmError, Message, TextDelta, ToolCall, Usage
from agents.speech.sentences import SentenceSplitter
from agents.tools import RECORDING_TOOLS, CallTools, ToolResult
from agents.transfer_headers import OBJECT_SCHEMA, HeaderError, transfer_headers, uri_with_headers
from media.paralinguistics import Prosody


@dataclass(frozen=True)
class UserTurn:
    text: str
    language: str
    confidence: float
    prosody: Prosody | None = None


@dataclass(frozen=True)
class Say:
    text: str


@dataclass(frozen=True)
class Act:
    action: Literal["transfer", "hangup", "dtmf", "pause_recording", "resume_recording"]
    arg: str = ""


Part = Say | Act


class Brain(Protocol):
    expects_code: bool
    """The next caller turn is a code or a number: the turn detector waits longer and DTMF is welcome."""

    def greeting(self) -> str: ...

    def respond(self, turn: UserTurn) -> AsyncIterator[Part]: ...

    def on_dtmf(self, digit: str) -> AsyncIterator[Part]: ...

    def heard(self, spoken: Sequence[str], interrupted: bool) -> None:
        """What the caller heard of the last reply (all of it unless `interrupted`)."""
        ...

    def retract(self) -> None:
        """Forget the last turn and reply: the caller had not finished, a longer version of the turn follows."""
        ...

    def resume(self, messages: Sequence[tuple[str, str]]) -> None:
        """Take over a conversation another backend began: `(role, text)` pairs, role `user` or `assistant`."""
        ...

    async def close(self) -> None: ...


CALL_TOOLS: tuple[dict[str, object], ...] = (
    {"type": "function", "function": {
        "name": "transfer_call", "description": "Transfer the caller to a person or another number.",
        "parameters": {"type": "object", "properties": {"target": {"type": "string", "description": "SIP URI"},
                                                        "headers": OBJECT_SCHEMA},
                       "required": ["target"]}}},
    {"type": "function", "function": {
        "name": "end_call", "description": "Hang up after saying goodbye.",
        "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {
        "name": "send_dtmf", "description": "Send touch-tone digits on the call (to navigate another IVR).",
        "parameters": {"type": "object", "properties": {"digits": {"type": "string"}}, "required": ["digits"]}}},
    {"type": "function", "function": {
        "name": "pause_recording", "description": RECORDING_TOOLS["pause_recording"],
        "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {
        "name": "resume_recording", "description": RECORDING_TOOLS["resume_recording"],
        "parameters": {"type": "object", "properties": {}}}},
)


TOOL_ROUNDS = 3
"""Requests per caller turn when the model keeps calling business tools."""


def _describe(turn: UserTurn) -> str:
    """The user message: the transcript, with tone of voice when it says something the words do not."""
    p = turn.prosody
    if p is None or p.label == "neutral" or not turn.text:
        return turn.text
    return f"{turn.text}\n[caller sounds {p.label}: pitch {p.mean_f0_hz:.0f} Hz, {p.syllables_per_s:.1f} syll/s]"


class LlmBrain:
    def __init__(self, client: LlmClient, system_prompt: str, greeting: str, filler: str, filler_after_s: float,
                 apology: str, transfer_default: str | None = None) -> None:
        self.client = client
        self.history = Conversation(system_prompt)
        self._greeting = greeting
        self.filler = filler
        self.filler_after_s = filler_after_s
        self.apology = apology
        self.transfer_default = transfer_default
        self.expects_code = False
        self.errors = 0
        self._mark = 0
        self.meter: Callable[[str, float], None] | None = None
        """The call's usage meter (`CallControl.meter`), set by the agent running the call."""
        self.tools: CallTools | None = None
        """The call's business tools, set by the agent running the call."""
        self.first_token_at: float | None = None
        """`time.monotonic()` of the model's first streamed output (text or tool call) for the latest turn."""

    def greeting(self) -> str:
        return self._greeting

    async def respond(self, turn: UserTurn) -> AsyncIterator[Part]:
        await self._settle()
        self._mark = len(self.history.history)
        self.first_token_at = None
        if self.tools is not None:
            self.tools.language = turn.language
        self.history.add_user(_describe(turn))
        async for part in self._complete():
            yield part

    async def on_dtmf(self, digit: str) -> AsyncIterator[Part]:
        await self._settle()
        self.history.add_user(f"[the caller pressed {digit} on the keypad]")
        async for part in self._complete():
            yield part

    async def _settle(self) -> None:
        """Add the results of tool calls a barge-in left running (waiting for them) before the caller's next turn."""
        if self.tools is not None:
            for call_id, args, result in await self.tools.settle():
                self.history.add_tool_calls([ToolCall(call_id, result.name, args)])
                self.history.add_tool_result(call_id, json.dumps(result.for_model()))

    def heard(self, spoken: Sequence[str], interrupted: bool) -> None:
        self.history.add_assistant_spoken(list(spoken), interrupted)

    def retract(self) -> None:
        del self.history.history[self._mark :]

    def resume(self, messages: Sequence[tuple[str, str]]) -> None:
        for role, text in messages:
            if role == "user":
                self.history.add_user(text)
            else:
                self.history.add_assistant(text)

    async def close(self) -> None:
        await self.client.aclose()

    async def _complete(self) -> AsyncIterator[Part]:
        """The model's reply; business tool calls run and the model is asked again with their results (up to
        `TOOL_ROUNDS` times), as it is when a call action it asked for cannot be done; a failed business tool gets
        its apology spoken and the turn ends there."""
        for _ in range(TOOL_ROUNDS):
            calls: list[ToolCall] = []
            refused: list[ToolCall] = []
            async for part in self._request(calls, refused):
                yield part
            runner = self.tools.runner if self.tools is not None else None
            business = [c for c in calls if runner is not None and c.name in runner.tools]
            if not business:
                if refused:
                    continue  # the model reads why in the tool result and tells the caller
                break
            failed: ToolResult | None = None
            results: list[tuple[ToolCall, ToolResult]] = []
            for c in business:
                assert self.tools is not None
                async for part in self._run_tool(self.tools, c, results):
                    yield part
                failed = failed or next((r for _, r in results if not r.ok), None)
            self.history.add_tool_calls([c for c, _ in results])
            for c, r in results:
                self.history.add_tool_result(c.id, json.dumps(r.for_model()))
            if failed is not None:
                assert self.tools is not None
                yield Say(self.tools.runner.tools[failed.name].apology)
                break

    async def _run_tool(self, tools: CallTools, c: ToolCall, out: list[tuple[ToolCall, ToolResult]]
                        ) -> AsyncIterator[Part]:
        """Run one tool call, yielding its filler when it is slow; cancelled, the call goes on if it must. A tool
        with side effects asks the caller first (CallTools.confirm), then says its own filler."""
        tool = tools.runner.tools[c.name]
        task = asyncio.ensure_future(tools.run(c.name, c.arguments, call_id=c.id, filler=tool.side_effects))
        try:
            done, _ = await asyncio.wait({task}, timeout=None if tool.side_effects else tool.filler_after_s)
            if not done:
                yield Say(tool.filler)
            out.append((c, await task))
        finally:
            if not task.done():
                task.cancel()  # CallTools.run keeps a non-idempotent call running (agents.tools)

    async def _request(self, calls: list[ToolCall], refused: list[ToolCall]) -> AsyncIterator[Part]:
        """One streamed request: its sentences and call actions; the tool calls it made go to `calls`, and the call
        actions that cannot be done (their error is the tool result) to `refused`."""
        splitter = SentenceSplitter()
        messages, tools = self.history.messages, list(CALL_TOOLS)
        if self.tools is not None:
            tools += self.tools.runner.chat_specs()
        asked = time.monotonic()
        stream = self.client.stream(messages, tools)
        nxt: asyncio.Task[object] | None = None
        received, usage, failed = 0, None, False
        try:
            async with contextlib.aclosing(stream):
                first = True
                while True:
                    nxt = asyncio.ensure_future(anext(stream))
                    if first:
                        done, _ = await asyncio.wait({nxt}, timeout=self.filler_after_s)
                        if not done:
                            yield Say(self.filler)  # the caller hears something while the model thinks
                        first = False
                    try:
                        delta = await nxt
                    except StopAsyncIteration:
                        break
                    if self.first_token_at is None and isinstance(delta, TextDelta | ToolCall):
                        self.first_token_at = time.monotonic()
                    if isinstance(delta, TextDelta):
                        received += len(delta.text)
                        for sentence in splitter.feed(delta.text):
                            yield Say(sentence)
                    elif isinstance(delta, ToolCall):
                        received += len(delta.name) + len(json.dumps(delta.arguments))
                        calls.append(delta)
                    elif isinstance(delta, Done):
                        usage = delta.usage
        except LlmError:
            self.errors += 1
            failed = True
            yield Say(self.apology)
            return
        finally:
            if nxt is not None and not nxt.done():
                nxt.cancel()
            if not (failed and not received):  # a request that failed before any output is not counted
                self._report(messages, tools, received, usage)
            trace("llm_request", messages=len(messages), chars_out=received, tool_calls=len(calls), failed=failed,
                  first_token_ms=None if self.first_token_at is None else round((self.first_token_at - asked) * 1000))
        for sentence in splitter.flush():
            yield Say(sentence)
        for call in calls:
            if self.tools is not None and call.name in self.tools.runner.tools:
                continue  # a business tool: `_complete` runs it
            act = self._call_action(call)
            self.history.add_tool_calls([call])
            if isinstance(act, Act):
                self.history.add_tool_result(call.id, "done")
                yield act
            else:
                self.history.add_tool_result(call.id, json.dumps(ToolResult(call.name, False, error=act).for_model()))
                refused.append(call)

    def _call_action(self, call: ToolCall) -> Act | str:
        """The call action a call tool asks for, or why it cannot be done (the model gets that, never a no-op)."""
        if call.name == "transfer_call":
            try:
                headers = transfer_headers(call.arguments.get("headers"))
            except HeaderError as e:
                return str(e)
            target = str(call.arguments.get("target") or self.transfer_default or "")
            return Act("transfer", uri_with_headers(target, headers)) if target else "no transfer target configured"
        if call.name == "end_call":
            return Act("hangup")
        if call.name == "send_dtmf":
            digits = str(call.arguments.get("digits") or "")
            return Act("dtmf", digits) if digits else "no digits to send"
        if call.name == "pause_recording":
            return Act("pause_recording")
        if call.name == "resume_recording":
            return Act("resume_recording")
        return f"no tool named {call.name!r}"


    def _report(self, messages: list[Message], tools: list[dict[str, object]], received: int,
                usage: Usage | None) -> None:
        """Report one request's tokens: the endpoint's own count, else characters (estimated as tokens later)."""
        if self.meter is None:
            return
        if usage is not None:
            self.meter("llm_in_tokens", usage.prompt_tokens)
            self.meter("llm_out_tokens", usage.completion_tokens)
        else:
            self.meter("llm_in_chars", len(json.dumps([messages, tools], separators=(",", ":"), ensure_ascii=False)))
            self.meter("llm_out_chars", received)


class DialogBrain:
    """The embedded default: rule-based intents and slot filling (agents.dialog), no network needed."""

    def __init__(self, dialog: Dialog) -> None:
        self.dialog = dialog
        self._saved: Dialog | None = None
        self.expects_code = False
        self.tools: CallTools | None = None
        """The call's business tools, for intents with a `tool`; set by the agent running the call."""

    def greeting(self) -> str:
        return self.dialog.start().text

    async def respond(self, turn: UserTurn) -> AsyncIterator[Part]:
        self._saved = copy.deepcopy(self.dialog)
        if self.tools is not None:
            self.tools.language = turn.language
        async for part in self._answer(self.dialog.on_user(turn.text)):
            yield part

    async def on_dtmf(self, digit: str) -> AsyncIterator[Part]:
        async for part in self._answer(self.dialog.on_dtmf(digit)):
            yield part

    async def _answer(self, reply: Reply) -> AsyncIterator[Part]:
        """The reply's parts; for an intent with a tool, the tool runs (its filler said by `CallTools` when slow)
        and the reply to its answer follows, or the tool's apology."""
        for part in self._parts(reply):
            yield part
        if reply.tool is None:
            return
        req = reply.tool
        if self.tools is None or req.name not in self.tools.runner.tools:
            result = ToolResult(req.name, False, error=f"tool {req.name!r} is not offered to this agent")
        else:
            result = await self.tools.run(req.name, req.arguments)
        after = self.dialog.on_tool_result(result.ok, result.data)
        if not after.text and not result.ok:
            tool = self.tools.runner.tools.get(req.name) if self.tools is not None else None
            after = replace(after, text=tool.apology if tool is not None else self.dialog.cfg.goodbye)
        for part in self._parts(after):
            yield part

    def heard(self, spoken: Sequence[str], interrupted: bool) -> None:
        return None  # the dialog's state does not depend on how much of a reply was heard

    def retract(self) -> None:
        if self._saved is not None:
            self.dialog, self._saved = self._saved, None

    def resume(self, messages: Sequence[tuple[str, str]]) -> None:
        return None  # rules keep no history: the dialog goes on from its first state, without its greeting

    async def close(self) -> None:
        return None

    def _parts(self, reply: Reply) -> list[Part]:
        self.expects_code = reply.expect in ("alnum", "digits", "keypad")
        splitter = SentenceSplitter()
        parts: list[Part] = [Say(t) for t in [*splitter.feed(reply.text), *splitter.flush()]]
        act = reply.action
        if act is not None:
            parts.append(Act(act.kind, act.arg))
        return parts
