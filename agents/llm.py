"""A streaming client for OpenAI-compatible chat completions, and the conversation history of a call.

`LlmClient.stream` POSTs `{base_url}/chat/completions` with `stream: true` and yields a `TextDelta` per token
chunk, a `ToolCall` per tool call once its arguments are complete, then `Done`. Consume it inside
`contextlib.aclosing(...)`: closing the generator, or cancelling the task while it waits for a token, closes the
HTTP connection at once, so the server stops generating.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
Message = dict[str, Any]
ToolSchema = Mapping[str, Any]

INTERRUPTED_MARK = "…"
"""Ends an assistant message that the caller cut off."""


class LlmError(Exception):
    """The LLM endpoint failed: the message names the endpoint and the cause."""


@dataclass(frozen=True)
class LlmConfig:
    base_url: str
    """For example `http://127.0.0.1:8080/v1`; the client adds `/chat/completions`."""
    model: str
    api_key: str | None = None
    temperature: float = 0.7
    max_tokens: int = 512
    first_token_timeout_s: float = 5.0
    """From the request to the first text or tool-call token."""
    total_timeout_s: float = 60.0
    """From the request to the end of the reply."""
    tools: tuple[ToolSchema, ...] = ()
    """OpenAI tool schemas (`{"type": "function", "function": {...}}`) offered with every request."""
    seed: int | None = None
    """Sent as the request's `seed` (the OpenAI API's best-effort determinism) when set."""


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Done:
    finish_reason: str | None
    """`stop`, `length`, `tool_calls`, ...; None if the server gave none."""
    usage: Usage | None = None
    """Token counts, when the server sent them (requested with `stream_options.include_usage`)."""


LlmDelta = TextDelta | ToolCall | Done


def _excerpt(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


class LlmClient:
    """Streams chat completions from one endpoint; `aclose` (or `async with`) releases its connections."""

    def __init__(self, config: LlmConfig) -> None:
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._name = f"LLM endpoint {self.url}"
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(config.total_timeout_s))

    async def __aenter__(self) -> LlmClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def stream(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolSchema] | None = None
    ) -> AsyncGenerator[LlmDelta, None]:
        """Stream the reply to `messages`; `tools` replaces the configured tools for this request."""
        cfg = self.config
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        offered = cfg.tools if tools is None else tools
        if offered:
            body["tools"] = list(offered)
        headers = {"Accept": "text/event-stream"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        start = asyncio.get_running_loop().time()
        first_deadline = start + min(cfg.first_token_timeout_s, cfg.total_timeout_s)
        total_deadline = start + cfg.total_timeout_s
        no_token = f"no token within {cfg.first_token_timeout_s:g} s"
        not_done = f"reply not complete within {cfg.total_timeout_s:g} s"
        request = self._http.build_request("POST", self.url, json=body, headers=headers)
        response = await self._within(self._http.send(request, stream=True), first_deadline, no_token)
        try:
            if response.status_code != 200:
                raw = await self._within(response.aread(), total_deadline, not_done)
                text = raw.decode(errors="replace").strip()
                raise LlmError(f"{self._name}: HTTP {response.status_code}: {_excerpt(text)}")
            parser = _StreamParser(self._name)
            lines = response.aiter_lines()
            while not parser.done:
                if parser.got_token:
                    line = await self._within(anext(lines, None), total_deadline, not_done)
                else:
                    line = await self._within(anext(lines, None), first_deadline, no_token)
                for event in parser.end() if line is None else parser.feed(line):
                    yield event
        finally:
            await response.aclose()

    async def _within(self, step: Awaitable[T], deadline: float, late: str) -> T:
        """Await one network step by `deadline`, turning its failures into `LlmError`s."""
        try:
            async with asyncio.timeout_at(deadline):
                return await step
        except TimeoutError:
            raise LlmError(f"{self._name}: {late}") from None
        except httpx.ConnectError as exc:
            raise LlmError(f"{self._name}: cannot connect: {str(exc) or type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise LlmError(f"{self._name}: {type(exc).__name__}: {exc}") from exc


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


class _StreamParser:
    """Sans-IO: SSE lines in, `LlmDelta`s out; concatenates tool-call fragments per index."""

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._data: list[str] = []
        self._calls: dict[int, _PartialCall] = {}
        self._finish: str | None = None
        self._usage: Usage | None = None
        self.got_token = False
        self.done = False

    def feed(self, line: str) -> list[LlmDelta]:
        if not line:
            data, self._data = "\n".join(self._data), []
            return self._event(data) if data else []
        if line.startswith(":"):
            return []
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value.removeprefix(" "))
        elif field not in ("event", "id", "retry"):
            raise LlmError(f"{self._endpoint}: malformed SSE line {_excerpt(line)!r}")
        return []

    def end(self) -> list[LlmDelta]:
        """The server closed the stream."""
        events = self.feed("")
        if self.done:
            return events
        if self._finish is None:
            raise LlmError(f"{self._endpoint}: stream ended without finish_reason or [DONE]")
        self.done = True
        return [*events, *self._complete_calls(), Done(self._finish, self._usage)]

    def _event(self, data: str) -> list[LlmDelta]:
        if data.strip() == "[DONE]":
            self.done = True
            return [*self._complete_calls(), Done(self._finish, self._usage)]
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise LlmError(f"{self._endpoint}: stream data is not JSON: {_excerpt(data)!r}") from None
        try:
            return self._chunk(chunk)
        except (AttributeError, TypeError, KeyError) as exc:
            raise LlmError(f"{self._endpoint}: unexpected chunk ({exc}): {_excerpt(data)!r}") from None

    def _chunk(self, chunk: Any) -> list[LlmDelta]:
        if "error" in chunk:
            raise LlmError(f"{self._endpoint}: error in stream: {_excerpt(json.dumps(chunk['error']))}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(tokens_in, int) and isinstance(tokens_out, int):
                self._usage = Usage(tokens_in, tokens_out)
        choices = chunk.get("choices") or []
        if not choices:
            return []  # e.g. the usage chunk
        choice = choices[0]
        delta = choice.get("delta") or {}
        events: list[LlmDelta] = []
        content = delta.get("content")
        if content:
            self.got_token = True
            events.append(TextDelta(str(content)))
        for i, fragment in enumerate(delta.get("tool_calls") or []):
            self.got_token = True
            call = self._calls.setdefault(int(fragment.get("index", i)), _PartialCall())
            call.id = call.id or str(fragment.get("id") or "")
            function = fragment.get("function") or {}
            call.name += str(function.get("name") or "")
            call.arguments += str(function.get("arguments") or "")
        if choice.get("finish_reason"):
            self._finish = str(choice["finish_reason"])
            events.extend(self._complete_calls())
        return events

    def _complete_calls(self) -> list[LlmDelta]:
        events: list[LlmDelta] = []
        for index, call in sorted(self._calls.items()):
            if not call.name:
                raise LlmError(f"{self._endpoint}: tool call #{index} has no function name")
            try:
                arguments = json.loads(call.arguments) if call.arguments.strip() else {}
            except json.JSONDecodeError:
                arguments = None
            if not isinstance(arguments, dict):
                raise LlmError(
                    f"{self._endpoint}: tool call {call.name!r}: arguments are not a JSON object: "
                    f"{_excerpt(call.arguments)!r}"
                )
            events.append(ToolCall(call.id or f"call_{index}", call.name, arguments))
        self._calls.clear()
        return events


class Conversation:
    """The system prompt and a call's history, as chat-completions messages."""

    def __init__(self, system_prompt: str) -> None:
        self.system_prompt = system_prompt
        self.history: list[Message] = []

    @property
    def messages(self) -> list[Message]:
        """The request's `messages`: the system prompt, then the history."""
        return [{"role": "system", "content": self.system_prompt}, *self.history]

    def add_user(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})

    def add_assistant(self, text: str) -> None:
        self.history.append({"role": "assistant", "content": text})

    def add_assistant_spoken(self, sentences_played: Sequence[str], interrupted: bool) -> None:
        """Record only what the caller heard of a spoken reply: the sentences played (the one cut off included),
        ending with `INTERRUPTED_MARK` when the caller barged in."""
        text = " ".join(s.strip() for s in sentences_played if s.strip())
        self.add_assistant(text + INTERRUPTED_MARK if interrupted else text)

    def add_tool_calls(self, calls: Sequence[ToolCall], text: str = "") -> None:
        """The assistant's turn that requested `calls` (and said `text` first, if anything)."""
        self.history.append(
            {
                "role": "assistant",
                "content": text or None,
                "tool_calls": [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                    for c in calls
                ],
            }
        )

    def add_tool_result(self, call_id: str, content: str) -> None:
        self.history.append({"role": "tool", "tool_call_id": call_id, "content": content})
