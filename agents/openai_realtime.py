"""OpenAI Realtime (GA) speech-to-speech backend over a server-side WebSocket.

Protocol followed: the GA Realtime API reference, client events (`session.update`, `input_audio_buffer.append`,
`response.create`, `response.cancel`, `conversation.item.create`, `conversation.item.truncate`) and server events
(`session.created`, `input_audio_buffer.speech_started`/`speech_stopped`, `response.created`,
`response.output_item.added`, `response.output_audio.delta`/`done`, `response.output_audio_transcript.delta`/`done`,
`response.function_call_arguments.done`, `response.done`, `error`) at
https://platform.openai.com/docs/api-reference/realtime-client-events and .../realtime-server-events (read in the
Markdown mirror github.com/xiqi/openai-api-markdown), the WebSocket guide
https://developers.openai.com/api/docs/guides/realtime-websocket (URL, `Authorization: Bearer`), and the audio
formats `{"type": "audio/pcmu"}` (G.711 mu-law, 8 kHz) and `{"type": "audio/pcm", "rate": 24000}`; `audio_format:
auto` takes the first for a call whose codec is PCMU (the caller's own G.711, with no 24 kHz detour) and the second
for any other (G.722, PCMA, a stream transport's L16), per call.

The caller's 16 kHz frames go up as they arrive (20 ms each); the reply's audio deltas are decoded, resampled with
state per reply and queued at once. Barge-in: the gateway's detector (`turn_owner: gateway`), or also the server's
`speech_started` (`turn_owner: server`, which flushes our playout), whichever comes first; either way the client
sends one `response.cancel` and one `conversation.item.truncate` to what the caller heard. The server never
cancels on its own (`interrupt_response: false`), so the client is the one place that knows what was heard.
A dead or dropped server gets a spoken apology at once and bounded reconnects; the call stays up meanwhile. Without
a `fallback` the caller hears `goodbye` once the reconnects are used up; with one, the cascade carries the call on as
soon as the server is dead (agents.s2s_fallback).
Every new session after the first is given the conversation so far as text items (agents.s2s_history): the caller's
turns from `conversation.item.input_audio_transcription.completed`, the model's as heard. A session near its
`expires_at` is renewed that way at a quiet moment, and one the server ends (`session_expired`) is replaced at once,
both without an apology.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from agents.base import (
    Agent,
    AgentFactory,
    BargeIn,
    CallControl,
    CallerSpeech,
    Dtmf,
    Handover,
    HungUp,
    Played,
    TransferFailed,
)
from agents.eventlog import emit
from agents.redact import redact_fields
from agents.s2s_fallback import fall_back, refused
from agents.s2s_history import History, heard_text
from agents.tools import RECORDING_TOOLS, CallTools, ToolConfig, ToolRunner
from agents.transfer_headers import OBJECT_SCHEMA, HeaderError, transfer_headers, uri_with_headers
from media.frames import FRAME_BYTES, SAMPLE_RATE
from media.g711 import ulaw_decode, ulaw_encode
from media.polyphase import PolyphaseResampler

if TYPE_CHECKING:
    from agents.session import TakesOver
    from agents.speech.tts import PromptCache



class OpenAIRealtimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["openai_realtime"]
    url: str = "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    api_key_env: str | None = "OPENAI_API_KEY"
    """Environment variable holding the API key (None: send no key, for local servers)."""
    model: str = "gpt-realtime"
    voice: str = "marin"
    instructions: str = (
        "You are a helpful phone assistant. Answer in one or two short spoken sentences. "
        "Before you transfer or end the call, say so briefly."
    )
    greeting: str | None = "Greet the caller in one short sentence and ask how you can help."
    """Instructions for a first response as the call starts; None waits for the caller to speak."""
    audio_format: Literal["auto", "pcmu", "pcm24"] = "auto"
    """`pcmu`: G.711 mu-law 8 kHz both ways (the telephone band, no 24 kHz detour); `pcm24`: PCM16 24 kHz; `auto`:
    `pcmu` when the call's codec is PCMU, else `pcm24` (chosen per call)."""
    turn_detection: Literal["server_vad", "semantic_vad"] = "server_vad"
    silence_duration_ms: int = Field(500, ge=100, le=5000)
    """server_vad: silence that ends the caller's turn."""
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    """semantic_vad: how soon the model takes its turn."""
    turn_owner: Literal["gateway", "server"] = "gateway"
    """Who detects barge-in: the gateway's detector only, or also the server's VAD (whichever is first)."""
    tools: tuple[str, ...] = ("transfer_call", "end_call", "send_dtmf")
    """Call actions (transfer_call, end_call, send_dtmf; pause_recording and resume_recording when listed) and
    business tools of the top-level `tools`."""
    transfer_target: str | None = None
    """SIP URI for transfer_call when the model names none."""
    apology: str = "Sorry, I lost my connection for a moment. Please say that again."
    goodbye: str = "Sorry, I cannot continue this call right now. Please call again later. Goodbye."
    connect_timeout_s: float = Field(5.0, gt=0)
    response_timeout_s: float = Field(5.0, gt=0)
    """A response that sends nothing for this long counts as a dead server."""
    reconnect_attempts: int = Field(4, ge=0, le=20)
    """Failed connects or drops in a row (no response completed between them) before the agent gives up."""
    reconnect_backoff_s: float = Field(0.5, ge=0)
    """Wait before the first retry; doubles with each further one."""
    transfer_timeout_s: float = Field(15.0, gt=0)
    input_transcription: str | None = "gpt-4o-mini-transcribe"
    """The model that transcribes the caller (`audio.input.transcription`), for the conversation a new session is
    given after a drop or renewal; None: a new session learns only what the model said."""
    renew_before_s: float = Field(60.0, ge=0)
    """Open a new session this long before the server's `expires_at` (a session lasts at most 60 minutes), at a
    quiet moment, with the conversation replayed; 0: only when the server ends it (`session_expired`)."""
    fallback: str | None = None
    """A configured cascaded agent that carries the call on, with the conversation so far, when the server is dead
    (a refused connect, the API key missing or refused, or `reconnect_attempts` used up); none: `goodbye`."""

    @field_validator("url")
    @classmethod
    def _ws_url(cls, v: str) -> str:
        if not v.startswith(("ws://", "wss://")):
            raise ValueError(f"url must start with ws:// or wss://, got {v!r}")
        return v


MAX_MESSAGE = 16 * 2**20
BYTES_PER_MS = {"pcmu": 8, "pcm24": 48}
_DTMF = re.compile(r"[0-9*#A-D]{1,32}")
_log = logging.getLogger("voicegate.openai_realtime")


def _event(event: str, **fields: object) -> None:
    """One JSON log line, like the gateway's own events (and its sinks get it)."""
    emit(_log, logging.INFO, event, fields)


Format = Literal["pcmu", "pcm24"]


def audio_format_for(setting: Literal["auto", "pcmu", "pcm24"], codec: str) -> Format:
    """The session's audio format for a call whose codec is `codec` (as SIP names it, `PCMU/8000`; "" unknown)."""
    if setting != "auto":
        return setting
    return "pcmu" if codec.split("/")[0].upper() == "PCMU" else "pcm24"


def _encoder(fmt: str) -> Callable[[bytes], bytes]:
    """16 kHz PCM16 caller frames -> the session's input audio."""
    if fmt == "pcmu":
        down = PolyphaseResampler(SAMPLE_RATE, 8000)
        return lambda pcm: ulaw_encode(down.process(pcm))
    return PolyphaseResampler(SAMPLE_RATE, 24000).process


def _decoder(fmt: str) -> Callable[[bytes], bytes]:
    """The session's output audio -> 16 kHz PCM16."""
    if fmt == "pcmu":
        up = PolyphaseResampler(8000, SAMPLE_RATE)
        return lambda data: up.process(ulaw_decode(data))
    return PolyphaseResampler(24000, SAMPLE_RATE).process


def _tool_specs(cfg: OpenAIRealtimeConfig) -> list[dict[str, Any]]:
    target = {"type": "string", "description": "SIP URI to transfer to, for example sip:sales@pbx.example.com"}
    specs: dict[str, tuple[str, dict[str, Any], list[str]]] = {
        "transfer_call": ("Transfer the caller to another number or department (blind SIP transfer).",
                          {"target": target, "headers": OBJECT_SCHEMA}, [] if cfg.transfer_target else ["target"]),
        "end_call": ("Hang up, after you have said goodbye.", {}, []),
        "send_dtmf": ("Send touch-tone digits on the line (0-9, *, #, A-D), for example to work a phone menu.",
                      {"digits": {"type": "string", "pattern": "^[0-9*#A-D]{1,32}$"}}, ["digits"]),
        **{name: (desc, {}, []) for name, desc in RECORDING_TOOLS.items()},
    }
    out = []
    for name in cfg.tools:
        if name not in specs:
            continue  # a business tool (agents.tools)
        desc, props, required = specs[name]
        out.append({"type": "function", "name": name, "description": desc,
                    "parameters": {"type": "object", "properties": props, "required": required}})
    return out


def session_update(cfg: OpenAIRealtimeConfig, tools: Sequence[dict[str, Any]] = (), codec: str = "") -> dict[str, Any]:
    """The `session.update` event for this config (GA shape) on a call whose codec is `codec`, offering the call
    actions and `tools` (business tools' specs, agents.tools)."""
    pcmu = audio_format_for(cfg.audio_format, codec) == "pcmu"
    fmt: dict[str, Any] = {"type": "audio/pcmu"} if pcmu else {"type": "audio/pcm", "rate": 24000}
    turn: dict[str, Any] = {"type": cfg.turn_detection, "create_response": True, "interrupt_response": False}
    if cfg.turn_detection == "server_vad":
        turn["silence_duration_ms"] = cfg.silence_duration_ms
    else:
        turn["eagerness"] = cfg.eagerness
    audio_in: dict[str, Any] = {"format": fmt, "turn_detection": turn}
    if cfg.input_transcription:
        audio_in["transcription"] = {"model": cfg.input_transcription}
    session: dict[str, Any] = {
        "type": "realtime", "model": cfg.model, "instructions": cfg.instructions, "output_modalities": ["audio"],
        "audio": {"input": audio_in, "output": {"format": fmt, "voice": cfg.voice}},
    }
    if specs := [*_tool_specs(cfg), *tools]:
        session["tools"] = specs
        session["tool_choice"] = "auto"
    return {"type": "session.update", "session": session}


RENEW_QUIET_S = 2.0
"""A session is renewed only this long after the caller last spoke: their turn's audio is in the old session, and
its answer is about to start there."""
RESUME_NOTE = (
    "This phone call continues from an earlier session, whose conversation follows. Do not greet the caller again; "
    "wait for them to speak."
)


def handover_items(h: Handover) -> list[dict[str, Any]]:
    """Conversation items for a call taken over: the note as a system message, then each message as text, with the
    earlier backend's tool calls as `function_call` and `function_call_output` items before the caller's last
    turn."""
    items = [_message("system", h.note)] if h.note else []
    said = [_message(role, text) for role, text in h.messages]
    calls: list[dict[str, Any]] = []
    for t in h.tools:
        calls.append({"type": "function_call", "call_id": t.call_id, "name": t.name, "arguments": t.arguments})
        calls.append({"type": "function_call_output", "call_id": t.call_id, "output": t.output})
    cut = len(said) - 1 if said and h.messages[-1][0] == "user" else len(said)
    return items + said[:cut] + calls + said[cut:]


def _message(role: str, text: str) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


class _FatalError(Exception):
    """Retrying cannot help (no API key, key refused)."""


class _BadServerError(Exception):
    """The server broke the protocol while the session was set up."""


@dataclass
class _Reply:
    """One assistant audio item as it streams in and plays out."""

    item_id: str
    response_id: str
    decode: Callable[[bytes], bytes]
    received_ms: float = 0.0
    pending: bytearray = field(default_factory=bytearray)
    played: list[asyncio.Future[Played]] = field(default_factory=list)
    interrupted: bool = False

    def heard_ms(self) -> int:
        return sum(f.result().played_ms for f in self.played if f.done() and not f.cancelled())

    def unfinished(self) -> bool:
        """Some of it is still queued or playing, or a flush cut it."""
        return any(not f.done() or (not f.cancelled() and f.result().interrupted) for f in self.played)


@dataclass
class _Turn:
    """One response's timings (time.monotonic()); `ref` is the caller's speech end or the time we asked."""

    response_id: str
    trigger: str
    ref: float | None
    ref_by: str | None
    first_delta: float | None = None
    first_enqueue: float | None = None
    overhead_max_ms: float = 0.0
    replies: list[_Reply] = field(default_factory=list)
    transcript: str = ""
    status: str = ""
    tool: str | None = None


_Outgoing = tuple[dict[str, Any], Callable[[float], None] | None]
"""A client event and what to call with the time it was sent."""


@dataclass
class _Request:
    event_id: str
    trigger: str
    t: float


class OpenAIRealtimeAgent(Agent):
    def __init__(self, cfg: OpenAIRealtimeConfig, handover: Handover | None = None,
                 tools: Mapping[str, ToolConfig] | None = None, fallback: TakesOver | None = None) -> None:
        self.cfg = cfg
        self.fallback = fallback
        """The cascade of `cfg.fallback`, when the gateway linked it (agents.registry.link_fallbacks)."""
        self._fell_back: str | None = None  # why the call moves to the fallback
        self._apology: asyncio.Task[None] | None = None
        self.tools = {n: t for n, t in (tools or {}).items() if n in cfg.tools}
        """The business tools offered (agents.tools)."""
        self._business: CallTools | None = None
        self.handover = handover
        """A call taken over: its first session gets the conversation so far and answers it, with no greeting."""
        self.call: CallControl | None = None
        self._out: asyncio.Queue[_Outgoing] | None = None
        self.audio_format: Format = audio_format_for(cfg.audio_format, "")
        """The session's audio format, chosen from the call's codec as the call starts."""
        self._encode: Callable[[bytes], bytes] = _encoder(self.audio_format)
        self._active: str | None = None  # response in progress on the server
        self._cancelled: set[str] = set()
        self._requests: list[_Request] = []
        self._turns: dict[str, _Turn] = {}
        self._reply: _Reply | None = None
        self._stops: dict[str, float] = {}  # latest caller speech end, by who noticed it
        self._functions: dict[str, str] = {}  # function call item id -> name
        self._transfer: asyncio.Future[int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Future[None]] = set()
        self._done = asyncio.Event()
        self._failures = 0
        self._outage_t: float | None = None
        self._ids = 0
        self.history = History(handover.messages if handover is not None else ())
        self._expires_at: float | None = None  # the session's end (server's wall clock, s)
        self._expired = False  # the server said `session_expired`
        self._caller_talking = False
        self._caller_end = 0.0
        self._recording = 0  # turns done on the server whose history entry waits for their playout

    # -- running ------------------------------------------------------------------------------------------
    async def run(self, call: CallControl) -> None:
        self.call = call
        self.audio_format = audio_format_for(self.cfg.audio_format, call.codec)
        runner = ToolRunner(self.tools, list(self.tools)) if self.tools else None
        self._business = CallTools(runner, call) if runner is not None else None
        if self._business is not None:
            self._business.asks_confirmation = True
        aux = [asyncio.create_task(self._uplink()), asyncio.create_task(self._events())]
        try:
            await self._serve()
        finally:
            for t in [*aux, *self._tasks]:
                t.cancel()
            await asyncio.gather(*aux, *self._tasks, *self._closing, return_exceptions=True)
            if runner is not None:
                await runner.aclose()
        if self._fell_back is not None and self.fallback is not None and self.cfg.fallback is not None:
            await fall_back(call, self.fallback, self.cfg.fallback, "openai_realtime", self._fell_back,
                            self.history.messages())

    async def _serve(self) -> None:
        """Connect, run the session, and on failure apologise and reconnect, until done or out of attempts."""
        greeted = False
        while not self._done.is_set():
            try:
                ws = await self._connect()
            except _FatalError as e:
                _event("openai_realtime_error", call=self._call.call_id, error=str(e))
                await self._give_up(str(e))
                return
            except (OSError, TimeoutError, WebSocketException, _BadServerError) as e:
                _event("openai_realtime_connect_failed", call=self._call.call_id, url=self.cfg.url,
                       attempt=self._failures + 1, error=repr(e)[:200])
                if not await self._failed(dead="connect refused" if refused(e) else None):
                    return
                continue
            self._outage_t = None
            planned = await self._session(ws, greet=not greeted)
            greeted = True
            if self._done.is_set():
                return
            if planned:
                continue  # renewed or expired: a new session at once, no apology
            if not await self._failed():
                return

    async def _failed(self, dead: str | None = None) -> bool:
        """After a failed connect or a drop: apologise once per outage, wait, and say whether to try again; `dead`
        (why the server is) moves the call to the fallback at once, if there is one."""
        self._failures += 1
        if self._outage_t is None:
            self._outage_t = time.monotonic()
            self._call.flush_playout()  # what was left of the broken reply
            self._apology = asyncio.ensure_future(self._apologise(self._outage_t))
            self._tasks.add(self._apology)
            self._apology.add_done_callback(self._tasks.discard)
        if dead is not None and self.fallback is not None:
            await self._give_up(dead)
            return False
        if self._failures > self.cfg.reconnect_attempts:
            await self._give_up(f"{self._failures} failed connects or drops in a row")
            return False
        await asyncio.sleep(self.cfg.reconnect_backoff_s * 2 ** (self._failures - 1))
        return True

    async def _apologise(self, since: float) -> None:
        _event("openai_realtime_apology", call=self._call.call_id, after_ms=round((time.monotonic() - since) * 1000))
        await self._call.say(self.cfg.apology)

    async def _give_up(self, why: str) -> None:
        """The server is dead: the call moves to the fallback once the apology is heard, or ends after `goodbye`."""
        _event("openai_realtime_give_up", call=self._call.call_id, failures=self._failures, reason=why,
               fallback=self.cfg.fallback if self.fallback is not None else None)
        if self.fallback is not None:
            if self._apology is None:  # a key missing or refused: no outage began
                self._apology = asyncio.ensure_future(self._apologise(time.monotonic()))
            await asyncio.gather(self._apology, return_exceptions=True)
            self._fell_back = why
            self._done.set()
            return
        self._done.set()
        await self._call.say(self.cfg.goodbye, interruptible=False)
        await self._call.hangup("agent_unavailable")

    async def _connect(self) -> ClientConnection:
        key = None
        if self.cfg.api_key_env:
            key = os.environ.get(self.cfg.api_key_env)
            if not key:
                raise _FatalError(f"environment variable {self.cfg.api_key_env} (api_key_env) is not set")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            ws = await connect(self.cfg.url, additional_headers=headers, open_timeout=self.cfg.connect_timeout_s,
                               close_timeout=1.0, compression=None, max_size=MAX_MESSAGE)
        except InvalidStatus as e:
            if e.response.status_code in (401, 403):
                raise _FatalError(f"{self.cfg.url} refused the API key: HTTP {e.response.status_code}") from e
            raise
        try:
            async with asyncio.timeout(self.cfg.connect_timeout_s):  # not wait_for: see _read
                raw = await ws.recv()
            first = _parse(raw)
            if first is None or first.get("type") != "session.created":
                raise _BadServerError(f"server sent {str(raw)[:80]!r} where session.created belongs")
            expires = (first.get("session") or {}).get("expires_at")
            self._expires_at = float(expires) if isinstance(expires, int | float) and expires > 0 else None
        except BaseException:
            await ws.close()
            raise
        return ws

    async def _session(self, ws: ClientConnection, greet: bool) -> bool:
        """Run one connection until it drops, stalls, or the agent is done; True when it ended as planned (renewed
        before it expired, or expired)."""
        out: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._out = out
        self._encode = _encoder(self.audio_format)
        self._expired = False
        self._send(session_update(self.cfg, self._business.runner.realtime_specs() if self._business else (),
                                  self._call.codec))
        if not greet:
            items = handover_items(Handover(self.history.messages(), RESUME_NOTE))
            for item in items:
                self._send({"type": "conversation.item.create", "item": item})
            _event("openai_realtime_resumed", call=self._call.call_id, items=len(items))
        elif self.handover is not None:
            for item in handover_items(self.handover):
                self._send({"type": "conversation.item.create", "item": item})
            self._create_response("handover")
        elif self.cfg.greeting:
            self._create_response("greeting", self.cfg.greeting)
        writer = asyncio.create_task(self._write(ws, out))
        reader = asyncio.create_task(self._read(ws))
        done = asyncio.create_task(self._done.wait())
        renew = asyncio.create_task(self._renew_due())
        try:
            finished, _ = await asyncio.wait({writer, reader, done, renew}, return_when=asyncio.FIRST_COMPLETED)
            if renew in finished:
                _event("openai_realtime_renew", call=self._call.call_id, expires_in_s=round(
                    (self._expires_at or 0) - time.time(), 1))
                return True
            if done not in finished:
                why = reader.result() if reader in finished else f"send failed: {writer.exception()!r}"
                _event("openai_realtime_dropped", call=self._call.call_id, reason=why, response=self._active,
                       expired=self._expired)
            return self._expired
        finally:
            self._out = None
            for t in (writer, reader, done, renew):
                t.cancel()
            await asyncio.gather(writer, reader, done, renew, return_exceptions=True)
            self._closing.add(closing := asyncio.ensure_future(ws.close()))  # not awaited: an apology may be due
            closing.add_done_callback(self._closing.discard)
            self._forget_connection()

    async def _renew_due(self) -> None:
        """Return at the first quiet moment (no response, no agent audio, the caller silent for `RENEW_QUIET_S`)
        once the session is within `renew_before_s` of its end (and half way through); never without an end or with
        renewal off."""
        if self._expires_at is None or self.cfg.renew_before_s <= 0:
            await asyncio.Event().wait()
            return
        now = time.time()
        half = (self._expires_at - now) / 2  # never sooner: a short session is not renewed in a loop
        await asyncio.sleep(max(half, self._expires_at - self.cfg.renew_before_s - now))
        while (self._active is not None or self._recording or self._call.speaking or self._caller_talking
               or time.monotonic() - self._caller_end < RENEW_QUIET_S):
            await asyncio.sleep(0.1)

    def _forget_connection(self) -> None:
        self._active = None
        self._reply = None  # its item died with the session: nothing to cancel or truncate any more
        self._cancelled.clear()
        self._requests.clear()
        self._functions.clear()
        for turn in self._turns.values():
            turn.status = turn.status or "dropped"
            self._recording += 1
            self._spawn(self._finish_turn(turn))
        self._turns.clear()

    async def _write(self, ws: ClientConnection, out: asyncio.Queue[_Outgoing]) -> None:
        while True:
            ev, on_sent = await out.get()
            await ws.send(json.dumps(ev))
            if on_sent is not None:
                on_sent(time.monotonic())

    async def _read(self, ws: ClientConnection) -> str:
        while True:
            timeout = self.cfg.response_timeout_s if self._active is not None else None
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns a message that arrives as the task
                # is cancelled and drops the cancellation, and the reader would then wait for the next message
                async with asyncio.timeout(timeout):
                    raw = await ws.recv()
            except TimeoutError:
                return f"stalled: nothing for {timeout} s during response {self._active}"
            except ConnectionClosed as e:
                return f"closed: {e}"
            t = time.monotonic()
            ev = _parse(raw)
            if ev is None:
                _event("openai_realtime_bad_event", call=self._call.call_id, error="not a JSON object",
                       line=str(raw)[:120])
                continue
            try:
                self._handle(ev, t)
            except (KeyError, TypeError, ValueError, binascii.Error) as e:
                _event("openai_realtime_bad_event", call=self._call.call_id, type=ev.get("type"), error=repr(e),
                       line=str(raw)[:120])

    def _send(self, ev: dict[str, Any], on_sent: Callable[[float], None] | None = None) -> None:
        if self._out is not None:
            self._out.put_nowait((ev, on_sent))

    def _create_response(self, trigger: str, instructions: str | None = None) -> None:
        self._ids += 1
        req = _Request(f"vg_{trigger}_{self._ids}", trigger, time.monotonic())
        self._requests.append(req)
        body = {"response": {"instructions": instructions}} if instructions else {}
        self._send({"type": "response.create", "event_id": req.event_id, **body})

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def _call(self) -> CallControl:
        assert self.call is not None
        return self.call

    # -- the call's side ----------------------------------------------------------------------------------
    async def _uplink(self) -> None:
        while True:
            frame = await self._call.listen()
            if self._out is not None:
                audio = base64.b64encode(self._encode(frame.pcm)).decode()
                self._send({"type": "input_audio_buffer.append", "audio": audio})
                self._call.meter("openai_realtime_in_s", len(frame.pcm) / 2 / SAMPLE_RATE)

    async def _events(self) -> None:
        while True:
            ev = await self._call.next_event()
            if isinstance(ev, BargeIn):
                self._barge_in("gateway", time.monotonic())
            elif isinstance(ev, CallerSpeech):
                self._caller_talking = ev.started
                if not ev.started:
                    self._stops["gateway"] = self._caller_end = time.monotonic()
            elif isinstance(ev, TransferFailed) and self._transfer is not None and not self._transfer.done():
                self._transfer.set_result(ev.code)
            elif isinstance(ev, Dtmf) and self._business is not None:
                self._business.key(ev.digit)  # only a tool's confirmation prompt listens for keys
            elif isinstance(ev, HungUp):
                return

    def _barge_in(self, source: str, t: float) -> None:
        """Stop the reply the caller talks over: flush (if the server noticed first), cancel, truncate; once."""
        reply = self._reply
        cut = reply if reply is not None and not reply.interrupted and (
            reply.response_id == self._active or reply.unfinished()) else None
        cancel = self._active if self._active is not None and self._active not in self._cancelled else None
        if cut is None and cancel is None:
            return
        if source == "server":
            self._call.flush_playout()
        info: dict[str, Any] = {"call": self._call.call_id, "by": source, "response": cancel}
        if cancel is not None:
            self._cancelled.add(cancel)

            def sent(at: float) -> None:
                info["cancel_sent_ms"] = round((at - t) * 1000, 2)

            self._send({"type": "response.cancel", "response_id": cancel}, sent)
        if cut is not None:
            cut.interrupted = True
            self._spawn(self._truncate(cut, info))
        else:
            _event("openai_realtime_barge_in", **info)

    async def _truncate(self, reply: _Reply, info: dict[str, Any]) -> None:
        if reply.played:
            await asyncio.wait(reply.played, timeout=0.5)  # flushed audio reports what was heard within a tick
        heard = reply.heard_ms()
        end = min(heard, int(reply.received_ms))
        self._send({"type": "conversation.item.truncate", "item_id": reply.item_id, "content_index": 0,
                    "audio_end_ms": end})
        _event("openai_realtime_barge_in", item=reply.item_id, heard_ms=heard, received_ms=round(reply.received_ms),
               audio_end_ms=end, **info)

    # -- the server's side --------------------------------------------------------------------------------
    def _handle(self, ev: dict[str, Any], t: float) -> None:
        kind = ev["type"]
        if kind == "response.output_audio.delta":
            self._on_audio(ev, t)
        elif kind == "input_audio_buffer.speech_started":
            if self.cfg.turn_owner == "server":
                self._barge_in("server", t)
        elif kind == "input_audio_buffer.speech_stopped":
            self._stops["server"] = t
        elif kind == "input_audio_buffer.committed":
            self.history.open("user", ev["item_id"])
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.history.fill(ev["item_id"], str(ev["transcript"]))
        elif kind == "response.created":
            self._on_created(ev["response"]["id"], t)
        elif kind == "response.output_item.added":
            item = ev["item"]
            if item["type"] == "function_call":
                self._functions[item["id"]] = item["name"]
        elif kind == "response.output_audio.done":
            reply = self._reply
            if reply is not None and reply.item_id == ev["item_id"] and not reply.interrupted and reply.pending:
                self._play(reply, len(reply.pending))
        elif kind == "response.output_audio_transcript.delta":
            if (turn := self._turns.get(ev["response_id"])) is not None:
                turn.transcript += ev["delta"]
        elif kind == "response.output_audio_transcript.done":
            if (turn := self._turns.get(ev["response_id"])) is not None:
                turn.transcript = ev["transcript"]
        elif kind == "response.function_call_arguments.done":
            name = self._functions.pop(ev["item_id"], None) or ev.get("name") or ""
            if (turn := self._turns.get(ev["response_id"])) is not None:
                turn.tool = name
            self._spawn(self._run_tool(name, ev["call_id"], ev["arguments"]))
        elif kind == "response.done":
            self._on_done(ev["response"])
        elif kind == "error":
            err = ev["error"]
            self._requests = [r for r in self._requests if r.event_id != err.get("event_id")]
            _event("openai_realtime_server_error", call=self._call.call_id, type=err.get("type"),
                   code=err.get("code"), message=str(err.get("message"))[:200], event_id=err.get("event_id"))
            if err.get("code") == "session_expired":
                self._expired = True

    def _on_created(self, rid: str, t: float) -> None:
        self._active = rid
        self.history.open("assistant", rid)
        req = self._requests.pop(0) if self._requests else None
        if req is None:
            self._turns[rid] = _Turn(rid, "speech", None, None)
        else:
            self._turns[rid] = _Turn(rid, req.trigger, req.t, "request")

    def _on_audio(self, ev: dict[str, Any], t: float) -> None:
        rid = ev["response_id"]
        if rid in self._cancelled:
            return
        data = base64.b64decode(ev["delta"], validate=True)
        self._call.meter("openai_realtime_out_s", len(data) / BYTES_PER_MS[self.audio_format] / 1000)
        reply = self._reply
        turn = self._turns.get(rid)
        if reply is None or reply.item_id != ev["item_id"]:
            reply = self._reply = _Reply(ev["item_id"], rid, _decoder(self.audio_format))
            if turn is not None:
                turn.replies.append(reply)
        if reply.interrupted:
            return
        reply.received_ms += len(data) / BYTES_PER_MS[self.audio_format]
        reply.pending += reply.decode(data)
        whole = len(reply.pending) // FRAME_BYTES * FRAME_BYTES
        if whole:
            self._play(reply, whole)
        if turn is None:
            return
        if turn.first_delta is None:
            turn.first_delta = t
            if turn.trigger == "speech" and self._stops:  # the earlier of the gateway's and the server's VAD
                turn.ref_by, turn.ref = min(self._stops.items(), key=lambda kv: kv[1])
                self._stops.clear()
        if whole:
            now = time.monotonic()
            turn.first_enqueue = turn.first_enqueue or now
            turn.overhead_max_ms = max(turn.overhead_max_ms, (now - t) * 1000)

    def _play(self, reply: _Reply, n: int) -> None:
        """Queue the first `n` bytes of the reply's decoded audio (whole frames, except at its end)."""
        pcm = bytes(reply.pending[:n])
        del reply.pending[:n]
        reply.played.append(asyncio.ensure_future(self._call.enqueue(pcm, SAMPLE_RATE)))

    def _on_done(self, response: dict[str, Any]) -> None:
        rid = response["id"]
        status = str(response.get("status", ""))
        if self._active == rid:
            self._active = None
        self._cancelled.discard(rid)
        if status == "completed":
            self._failures = 0
            self._outage_t = None
        turn = self._turns.pop(rid, None)
        if turn is not None:
            turn.status = status
            self._recording += 1
            self._spawn(self._finish_turn(turn))

    async def _finish_turn(self, turn: _Turn) -> None:
        """Record the turn once its audio has played or been cut."""
        played = [f for r in turn.replies for f in r.played]
        try:
            if played:
                await asyncio.wait(played)
        finally:
            self._recording -= 1
        audio_ms = sum(r.received_ms for r in turn.replies)
        self.history.fill(turn.response_id, heard_text(turn.transcript, sum(r.heard_ms() for r in turn.replies),
                                                       audio_ms) if turn.replies else turn.transcript)

        def ms(t: float | None) -> float | None:
            return None if t is None or turn.ref is None else round((t - turn.ref) * 1000, 1)

        overhead = None
        if turn.first_delta is not None and turn.first_enqueue is not None:
            overhead = round((turn.first_enqueue - turn.first_delta) * 1000, 2)
        self._call.record_turn({
            "engine": "openai_realtime", "response": turn.response_id, "trigger": turn.trigger,
            "status": turn.status, "from": turn.ref_by, "first_delta_ms": ms(turn.first_delta),
            "first_audio_ms": ms(turn.first_enqueue), "overhead_ms": overhead,
            "overhead_max_ms": round(turn.overhead_max_ms, 2),
            "audio_ms": round(audio_ms),
            "heard_ms": sum(r.heard_ms() for r in turn.replies),
            "interrupted": any(r.interrupted for r in turn.replies), "tool": turn.tool, "text": turn.transcript[:300],
        })

    # -- tools --------------------------------------------------------------------------------------------
    async def _run_tool(self, name: str, call_id: str, arguments: str) -> None:
        try:
            args = json.loads(arguments) if arguments.strip() else {}
            if not isinstance(args, dict):
                raise ValueError("not an object")
        except ValueError:
            result: dict[str, Any] | None = {"ok": False, "error": f"arguments are not a JSON object: {arguments[:80]}"}
        else:
            _event("openai_realtime_tool", call=self._call.call_id, tool=name, arguments=redact_fields(args))
            if self._business is not None and name in self._business.runner.tools:
                await self._run_business(self._business, name, call_id, args)
                return
            result = await self._act(name, args)
        if result is None:
            return
        self._send({"type": "conversation.item.create",
                    "item": {"type": "function_call_output", "call_id": call_id, "output": json.dumps(result)}})
        self._create_response("tool")

    async def _run_business(self, tools: CallTools, name: str, call_id: str, args: dict[str, Any]) -> None:
        """A business tool (agents.tools), once the caller heard what the model said first: the result goes back to
        the model, which answers; a failure gets the tool's apology in the gateway's voice and the model is told,
        without a new response (the caller speaks next)."""
        reply = self._reply
        if reply is not None and reply.played:
            await asyncio.wait(reply.played)
        result = await tools.run(name, args)
        if not result.ok:
            await self._call.say(tools.runner.tools[name].apology)
        self._send({"type": "conversation.item.create",
                    "item": {"type": "function_call_output", "call_id": call_id,
                             "output": json.dumps(result.for_model())}})
        if result.ok:
            self._create_response("tool")

    async def _act(self, name: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """Carry out a tool call once the caller has heard what the model said first; None: the call is over."""
        reply = self._reply
        if reply is not None and reply.played:
            await asyncio.wait(reply.played)
        if name == "transfer_call":
            target = str(args.get("target") or self.cfg.transfer_target or "")
            if not target:
                return {"ok": False, "error": "no transfer target given"}
            try:
                headers = transfer_headers(args.get("headers"))
            except HeaderError as e:
                return {"ok": False, "error": str(e)}
            self._transfer = asyncio.get_running_loop().create_future()
            await self._call.transfer(uri_with_headers(target, headers))
            try:
                async with asyncio.timeout(self.cfg.transfer_timeout_s):  # not wait_for: see _read
                    code = await self._transfer
            except TimeoutError:
                return {"ok": False, "error": f"no outcome of the transfer within {self.cfg.transfer_timeout_s} s"}
            return {"ok": False, "error": f"the transfer target refused the call (SIP {code})"}
        if name == "end_call":
            self._done.set()
            await self._call.hangup("agent")
            return None
        if name == "send_dtmf":
            digits = str(args.get("digits", ""))
            if not _DTMF.fullmatch(digits):
                return {"ok": False, "error": f"digits must be 1-32 of 0-9*#A-D, got {digits[:40]!r}"}
            await self._call.send_dtmf(digits)
            return {"ok": True, "sent": digits}
        if name in RECORDING_TOOLS:
            if not self._call.pause_recording(name == "pause_recording"):
                return {"ok": False, "error": "the call is not recorded"}
            return {"ok": True}
        return {"ok": False, "error": f"unknown tool {name!r}"}


def _parse(raw: str | bytes) -> dict[str, Any] | None:
    """A server event, or None when the message is not a JSON object with a string `type`."""
    try:
        ev = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return ev if isinstance(ev, dict) and isinstance(ev.get("type"), str) else None


class OpenAIRealtimeFactory(AgentFactory):
    def __init__(self, name: str, cfg: OpenAIRealtimeConfig, prompts: PromptCache,
                 tools: Mapping[str, ToolConfig] | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.prompts = prompts
        self.tools = dict(tools or {})
        self.fallback: TakesOver | None = None
        """The cascade named by `cfg.fallback`, set by agents.registry.link_fallbacks."""

    async def prepare(self) -> None:
        """Render the apology and goodbye now, so a dead server is answered within a frame or two."""
        texts = [self.cfg.apology, self.cfg.goodbye]
        texts += [t for name in self.cfg.tools if name in self.tools for t in (self.tools[name].filler,
                                                                                 self.tools[name].apology)]
        for text in texts:
            await self.prompts.prepare(text)

    def create(self, handover: Handover | None = None) -> Agent:
        if self.cfg.fallback is not None and self.fallback is None:
            raise RuntimeError(f"agent {self.name!r}: its fallback {self.cfg.fallback!r} was not linked "
                               "(agents.registry.link_fallbacks)")
        return OpenAIRealtimeAgent(self.cfg, handover, self.tools, self.fallback)
