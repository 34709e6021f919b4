"""Business tools: functions declared once in the config's top-level `tools:` and offered to every agent that lists
them (LLM and S2S backends in their own function-calling formats, the scripted agent from a flow step).

A tool is an HTTP webhook (httpx; method, URL template, headers with `${ENV}` secrets, timeout, retries only for
idempotent methods) or a Python entry point `module:function`. Arguments are checked against the tool's JSON Schema
(the `jsonschema` package) before anything is sent; every call gets the call's context (`ToolContext`), whose caller
identity comes from SIP (P-Asserted-Identity, or the trunk the call came in on), never from speech. Results are
JSON, trimmed to `max_result_chars` before they reach a model. `run_tool` never raises for a tool's failure: the
`ToolResult` says what went wrong, naming the tool. The trimming is written here because no library shrinks a JSON
value to a character budget while keeping it valid JSON.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from string import Formatter
from typing import Any, Literal
from urllib.parse import quote

import httpx
import jsonschema
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.base import CallControl, ToolOutcome
from agents.eventlog import trace
from agents.redact import redact_fields

CONFIRM_S = 8.0
"""How long the caller has to press 1 after a side-effect tool's confirmation prompt."""
IDEMPOTENT = frozenset({"GET", "PUT", "DELETE", "HEAD"})
RECORDING_TOOLS = {
    "pause_recording": "Pause the call recording (it records silence), for example before the caller reads out a "
                       "card number; resume it afterwards.",
    "resume_recording": "Resume the call recording after pause_recording.",
}
"""The call actions that pause and resume the call's recording, with what the model is told about them."""
CALL_TOOL_NAMES = frozenset({"transfer_call", "end_call", "send_dtmf", "pause_recording", "resume_recording"})
"""The built-in call actions; business tools may not reuse these names."""
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENTRY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpTool(_Strict):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str
    """`{argument}` fields are filled in (URL-escaped); GET and DELETE send the other arguments as the query, the
    other methods a JSON body `{"arguments": ..., "context": ...}`."""
    headers: dict[str, str] = {}
    """`${ENV_VAR}` in a value is read from the environment at call time (secrets never go in the YAML file)."""
    timeout_s: float = Field(3.0, gt=0, le=60)
    retries: int = Field(0, ge=0, le=5)
    """Further attempts after a connection error, timeout or 5xx; only for idempotent methods."""

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {v!r}")
        return v

    @model_validator(mode="after")
    def _retry_safe(self) -> HttpTool:
        if self.retries and self.method not in IDEMPOTENT:
            raise ValueError(f"retries: {self.method} is not idempotent, a retry could act twice; use 0")
        return self


class ToolConfig(_Strict):
    description: str
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    """JSON Schema of the arguments (an object)."""
    http: HttpTool | None = None
    python: str | None = None
    """`module:function`, called as `function(arguments, context)` (sync or async); returns JSON-able data."""
    side_effects: bool = False
    """The tool changes something (a booking, an order): it runs only after the caller confirms on the keypad."""
    confirm: str = "To go ahead, press 1. To cancel, press any other key."
    """The confirmation prompt; `{argument}` fields are filled in (in a flow, `{variables}`)."""
    verified_caller: bool = False
    """The tool acts on the caller's account: refused unless the caller's number came from P-Asserted-Identity or
    a configured trunk."""
    max_result_chars: int = Field(2000, ge=64, le=100_000)
    filler: str = "One moment while I check."
    filler_after_s: float = Field(1.0, gt=0)
    """Say `filler` when the tool has not answered after this long."""
    apology: str = "Sorry, I could not look that up right now."

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(v)
        except jsonschema.SchemaError as e:
            raise ValueError(f"not a valid JSON Schema: {e.message}") from None
        if v.get("type") != "object":
            raise ValueError("the arguments' schema must have type: object")
        return v

    @field_validator("python")
    @classmethod
    def _entry(cls, v: str | None) -> str | None:
        if v is not None and not _ENTRY.fullmatch(v):
            raise ValueError(f"python must be module:function, got {v!r}")
        return v

    @model_validator(mode="after")
    def _one_impl(self) -> ToolConfig:
        if (self.http is None) == (self.python is None):
            raise ValueError("give exactly one implementation: http or python")
        return self

    @property
    def idempotent(self) -> bool:
        return self.python is None and self.http is not None and self.http.method in IDEMPOTENT


def check_tool_names(names: Sequence[str], tools: Mapping[str, ToolConfig], where: str) -> None:
    """ValueError naming `where` when a listed tool is not declared."""
    for name in names:
        if name not in tools and name not in CALL_TOOL_NAMES:
            raise ValueError(f"{where}: no tool {name!r} in the top-level tools")


def check_declared(tools: Mapping[str, ToolConfig]) -> None:
    for name in tools:
        if not _NAME.fullmatch(name) or name in CALL_TOOL_NAMES:
            raise ValueError(f"tools.{name}: a tool name is 1-64 letters, digits, _ or -, and not a call action")


@dataclass(frozen=True)
class ToolContext:
    """What every tool call is told about the call."""

    call_id: str
    caller: str
    """The caller's number: from P-Asserted-Identity when the INVITE had one, else the From user part."""
    caller_verified: bool
    """The number came from the network (P-Asserted-Identity or a configured trunk), not from the caller."""
    trunk: str = ""
    language: str = "en"
    digits: str = ""
    """Keys the caller pressed so far."""
    variables: Mapping[str, str] = field(default_factory=dict)
    """The scripted agent's collected variables."""

    def as_json(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "caller": self.caller, "caller_verified": self.caller_verified,
                "trunk": self.trunk, "language": self.language, "digits": self.digits,
                "variables": dict(self.variables)}


_PAI_USER = re.compile(r"<?(?:sips?|tel):\+?([^@;>]+)")


def caller_identity(caller: str, sip_headers: Mapping[str, str], trunk: str) -> tuple[str, bool]:
    """The caller's number and whether the network vouches for it: P-Asserted-Identity (RFC 3325, only from a
    trusted peer), else the From user on a configured trunk, else the From user unverified."""
    pai = next((v for k, v in sip_headers.items() if k.lower() == "p-asserted-identity"), "")
    if m := _PAI_USER.search(pai):
        return m.group(1), True
    return caller, bool(trunk)


@dataclass(frozen=True)
class ToolResult:
    name: str
    ok: bool
    data: Any = None
    """The JSON result, trimmed to the tool's limit (None on error)."""
    error: str = ""
    latency_ms: float = 0.0
    result_chars: int = 0
    """Size of the result's JSON before trimming."""
    requested: bool = False
    """A request was made (False when the arguments were refused first)."""

    def for_model(self) -> dict[str, Any]:
        return {"ok": True, "result": self.data} if self.ok else {"ok": False, "error": self.error}

    def record(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The call record's entry: redacted arguments, latency, result size, error."""
        return {"tool": self.name, "arguments": redact_fields(dict(arguments)), "ok": self.ok,
                "latency_ms": round(self.latency_ms, 1), "result_chars": self.result_chars,
                "error": self.error or None}


class ToolError(Exception):
    """A tool failed; the message names the tool."""


def trim_json(value: Any, limit: int) -> Any:
    """`value` shrunk until its JSON has at most `limit` characters: the last items of the longest list dropped,
    or the longest string cut (ending with `…`), one step at a time; still valid JSON, its shape kept."""
    value = json.loads(json.dumps(value))
    while len(json.dumps(value, ensure_ascii=False)) > limit:
        kind, path, size = _largest(value, ())
        if size <= 1 and kind == "list" or size <= 8 and kind == "str" or kind == "none":
            return _as_text(value, limit)
        parent: Any = value
        for key in path[:-1]:
            parent = parent[key]
        target = parent[path[-1]] if path else value
        new = target[: len(target) // 2] if kind == "list" else target[: len(target) // 2] + "…"
        if path:
            parent[path[-1]] = new
        else:
            value = new
    return value


def _as_text(value: Any, limit: int) -> dict[str, str]:
    """`value`'s JSON cut to fit `limit` as `{"truncated": text}` (the last resort of `trim_json`)."""
    text = json.dumps(value, ensure_ascii=False)
    cut = limit
    while cut > 0 and len(json.dumps({"truncated": text[:cut]}, ensure_ascii=False)) > limit:
        cut -= max(1, cut // 8)
    return {"truncated": text[:cut]}


def _largest(v: Any, path: tuple[Any, ...]) -> tuple[str, tuple[Any, ...], int]:
    """The longest list or string inside `v` (by JSON length): its kind, path and item/character count."""
    best: tuple[str, tuple[Any, ...], int] = ("none", (), 0)
    best_len = -1

    def visit(x: Any, p: tuple[Any, ...]) -> None:
        nonlocal best, best_len
        if isinstance(x, (list, str)):
            n = len(json.dumps(x, ensure_ascii=False))
            if n > best_len:
                best, best_len = ("list" if isinstance(x, list) else "str", p, len(x)), n
        if isinstance(x, dict):
            for k, c in x.items():
                visit(c, (*p, k))
        elif isinstance(x, list):
            for i, c in enumerate(x):
                visit(c, (*p, i))

    visit(v, path)
    return best


def validate_arguments(name: str, tool: ToolConfig, arguments: Mapping[str, Any]) -> str:
    """'' when `arguments` fit the tool's schema, else the reason (naming the tool and the field)."""
    errors = sorted(jsonschema.Draft202012Validator(tool.parameters).iter_errors(dict(arguments)),
                    key=lambda e: list(e.absolute_path))
    if not errors:
        return ""
    e = errors[0]
    where = ".".join(str(p) for p in e.absolute_path) or "arguments"
    return f"tool {name!r}: {where}: {e.message}"


def _env(text: str, name: str) -> str:
    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            raise ToolError(f"tool {name!r}: environment variable {m.group(1)} (a header secret) is not set")
        return value

    return _ENV.sub(sub, text)


class ToolRunner:
    """Runs one call's tools; `aclose` releases its HTTP connections."""

    def __init__(self, tools: Mapping[str, ToolConfig], names: Sequence[str]) -> None:
        self.tools = {n: tools[n] for n in names if n in tools}
        self._http = httpx.AsyncClient()
        self._entries: dict[str, Callable[..., Any]] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the vendors' formats -----------------------------------------------------------------------------
    def chat_specs(self) -> list[dict[str, Any]]:
        """OpenAI chat-completions `tools` entries."""
        return [{"type": "function", "function": {"name": n, "description": t.description,
                                                  "parameters": t.parameters}} for n, t in self.tools.items()]

    def realtime_specs(self) -> list[dict[str, Any]]:
        """OpenAI Realtime `session.tools` entries."""
        return [{"type": "function", "name": n, "description": t.description, "parameters": t.parameters}
                for n, t in self.tools.items()]

    def gemini_declarations(self) -> list[dict[str, Any]]:
        """Gemini Live `functionDeclarations` (the JSON Schema as `parametersJsonSchema`)."""
        return [{"name": n, "description": t.description, "parametersJsonSchema": t.parameters}
                for n, t in self.tools.items()]

    # -- running ------------------------------------------------------------------------------------------
    async def run(self, name: str, arguments: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        """Call the tool; a failure comes back as a `ToolResult` with `error` (never an exception)."""
        t0 = time.monotonic()
        tool = self.tools.get(name)
        if tool is None:
            return ToolResult(name, False, error=f"tool {name!r} is not offered to this agent")
        if reason := validate_arguments(name, tool, arguments):
            return ToolResult(name, False, error=reason)
        if tool.verified_caller and not ctx.caller_verified:
            return ToolResult(name, False, error=f"tool {name!r} needs a caller identity from the network "
                                                 "(P-Asserted-Identity or a trunk); this call has none")
        try:
            data = await self._call(name, tool, dict(arguments), ctx)
            text = json.dumps(data, ensure_ascii=False)
        except ToolError as e:
            return ToolResult(name, False, error=str(e), latency_ms=(time.monotonic() - t0) * 1000, requested=True)
        except (TypeError, ValueError) as e:
            return ToolResult(name, False, error=f"tool {name!r}: result is not JSON: {e}",
                              latency_ms=(time.monotonic() - t0) * 1000, requested=True)
        return ToolResult(name, True, trim_json(data, tool.max_result_chars), latency_ms=(time.monotonic() - t0)
                          * 1000, result_chars=len(text), requested=True)

    async def _call(self, name: str, tool: ToolConfig, args: dict[str, Any], ctx: ToolContext) -> Any:
        if tool.python is not None:
            return await self._python(name, tool.python, args, ctx)
        assert tool.http is not None
        return await self._webhook(name, tool.http, args, ctx)

    async def _python(self, name: str, entry: str, args: dict[str, Any], ctx: ToolContext) -> Any:
        fn = self._entries.get(entry)
        if fn is None:
            module, _, attr = entry.partition(":")
            try:
                fn = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise ToolError(f"tool {name!r}: cannot load {entry}: {e}") from None
            self._entries[entry] = fn
        try:
            if inspect.iscoroutinefunction(fn):
                return await fn(args, ctx)
            return await asyncio.to_thread(fn, args, ctx)
        except Exception as e:  # the user's code: its failure is the tool's error, the call goes on
            raise ToolError(f"tool {name!r}: {entry} raised {type(e).__name__}: {e}") from None

    async def _webhook(self, name: str, h: HttpTool, args: dict[str, Any], ctx: ToolContext) -> Any:
        used = {f for _, f, _, _ in Formatter().parse(h.url) if f}
        if missing := used - set(args):
            raise ToolError(f"tool {name!r}: the URL needs argument {sorted(missing)[0]!r}")
        url = h.url.format_map({k: quote(str(args[k]), safe="") for k in used})
        rest = {k: v for k, v in args.items() if k not in used}
        headers = {k: _env(v, name) for k, v in h.headers.items()}
        headers.update({"X-Voicegate-Call-Id": ctx.call_id, "X-Voicegate-Caller": ctx.caller,
                        "X-Voicegate-Caller-Verified": "true" if ctx.caller_verified else "false"})
        kwargs: dict[str, Any] = {"headers": headers, "timeout": h.timeout_s}
        if h.method in ("GET", "DELETE"):
            kwargs["params"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in rest.items()}
        else:
            kwargs["json"] = {"arguments": args, "context": ctx.as_json()}
        last = ""
        for _attempt in range(h.retries + 1):
            try:
                r = await self._http.request(h.method, url, **kwargs)
            except httpx.TimeoutException:
                last = f"tool {name!r}: {h.method} {h.url} got no answer within {h.timeout_s:g} s"
                continue
            except httpx.HTTPError as e:
                last = f"tool {name!r}: {h.method} {h.url} failed: {type(e).__name__}: {e}"
                continue
            if r.status_code >= 500:
                last = f"tool {name!r}: {h.method} {h.url} answered HTTP {r.status_code}"
                continue
            if r.status_code >= 400:
                raise ToolError(f"tool {name!r}: {h.method} {h.url} answered HTTP {r.status_code}: {r.text[:200]}")
            try:
                return r.json()
            except ValueError:
                raise ToolError(f"tool {name!r}: {h.method} {h.url} answered with invalid JSON: "
                                f"{r.text[:80]!r}") from None
        raise ToolError(last)


class CallTools:
    """One call's tools: the context every call gets, the filler, barge-in safety and the call record.

    `start` runs a tool as a task of its own that records itself in the call record when it ends, so an agent
    cancelled by a barge-in does not cancel a non-idempotent call (`run` shields it) and its result is kept for
    the agent's next turn (`settle`).
    """

    def __init__(self, runner: ToolRunner, call: CallControl) -> None:
        self.runner = runner
        self.call = call
        self.language = "en"
        self.voice: str | None = None
        """The voice of the filler (the call's default when None)."""
        self.variables: dict[str, str] = {}
        self.asks_confirmation = False
        """`run` asks the caller to confirm a side-effect tool (the agent routes keys to `key`); otherwise the
        agent confirms on its own and says so with `confirmed`."""
        self._fillers: set[asyncio.Future[Any]] = set()
        self._confirming: asyncio.Future[str] | None = None
        self._left: list[tuple[str, dict[str, Any], asyncio.Task[ToolResult]]] = []
        """Non-idempotent calls whose agent was cancelled meanwhile: `(call id, arguments, task)`, oldest first."""
        self.outcomes: list[ToolOutcome] = []
        """Every call that finished (not cancelled), in the order they finished: what a backend taking the call
        over is told (agents.hybrid)."""

    def context(self) -> ToolContext:
        caller, verified = caller_identity(self.call.caller, self.call.sip_headers, self.call.trunk)
        return ToolContext(self.call.call_id, caller, verified, self.call.trunk, self.language, self.call.digits,
                           dict(self.variables))

    def key(self, digit: str) -> bool:
        """Give a key press to the confirmation waiting for one; False when none waits (the agent handles it)."""
        fut = self._confirming
        if fut is None or fut.done():
            return False
        fut.set_result(digit)
        return True

    async def confirm(self, name: str, arguments: Mapping[str, Any]) -> bool:
        """Ask the caller to confirm a side-effect tool (its `confirm` prompt, `{argument}`s filled in) and wait up
        to `CONFIRM_S` for a key: True for 1. The agent routes keys here with `key` meanwhile."""
        tool = self.runner.tools[name]
        try:
            prompt = tool.confirm.format_map(dict(arguments))
        except (KeyError, IndexError, ValueError):
            prompt = tool.confirm
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._confirming = fut
        try:
            await self.call.say(prompt, True, self.voice)
            async with asyncio.timeout(CONFIRM_S):
                return await fut == "1"
        except TimeoutError:
            return False
        finally:
            self._confirming = None

    def start(self, name: str, arguments: Mapping[str, Any], confirmed: bool = False, call_id: str = ""
              ) -> asyncio.Task[ToolResult]:
        tool = self.runner.tools.get(name)
        if tool is not None and tool.side_effects and not confirmed:
            refused = ToolResult(name, False, error=f"tool {name!r} has side effects and needs the caller's "
                                                    "confirmation on the keypad first")
            task: asyncio.Task[ToolResult] = asyncio.ensure_future(_done(refused))
        else:
            task = asyncio.ensure_future(self.runner.run(name, arguments, self.context()))
        args = dict(arguments)

        def finished(t: asyncio.Task[ToolResult]) -> None:
            if not t.cancelled():
                self._finished(call_id, args, t.result())

        task.add_done_callback(finished)
        return task

    def _finished(self, call_id: str, arguments: dict[str, Any], result: ToolResult) -> None:
        self.call.record_turn(result.record(arguments))
        trace("tool_result", tool=result.name, ok=result.ok, latency_ms=round(result.latency_ms, 1),
              result_chars=result.result_chars)
        cid = call_id or f"call_{len(self.outcomes) + 1}"
        self.outcomes.append(ToolOutcome(cid, result.name, json.dumps(arguments, ensure_ascii=False),
                                         json.dumps(result.for_model(), ensure_ascii=False)))

    async def run(self, name: str, arguments: Mapping[str, Any], confirmed: bool = False, call_id: str = "",
                  filler: bool = True) -> ToolResult:
        """Run the tool, saying its filler (at once, not waiting for it) when it is slow and `filler` is on.
        Cancelled, an idempotent call is cancelled too; another goes on and `settle` gives its result (under
        `call_id`)."""
        tool = self.runner.tools.get(name)
        if tool is not None and tool.side_effects and not confirmed and self.asks_confirmation:
            confirmed = await self.confirm(name, arguments)
            if not confirmed:  # not a failure: the model hears that nothing was done
                declined = ToolResult(name, True, {"done": False, "reason": "the caller did not confirm"})
                self._finished(call_id, dict(arguments), declined)
                return declined
        task = self.start(name, arguments, confirmed, call_id)
        try:
            if tool is not None and filler:
                done, _ = await asyncio.wait({task}, timeout=tool.filler_after_s)
                if not done:
                    filler_task = asyncio.ensure_future(self.call.say(tool.filler, True, self.voice))
                    self._fillers.add(filler_task)  # kept until it has played (the loop holds tasks weakly)
                    filler_task.add_done_callback(self._fillers.discard)
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if tool is not None and tool.idempotent:
                task.cancel()
            else:
                self._left.append((call_id, dict(arguments), task))
            raise

    async def settle(self) -> list[tuple[str, dict[str, Any], ToolResult]]:
        """The results of the calls a cancelled agent left running (waiting for them), oldest first, once each."""
        left, self._left = self._left, []
        return [(cid, args, await task) for cid, args, task in left]


async def _done(result: ToolResult) -> ToolResult:
    return result
