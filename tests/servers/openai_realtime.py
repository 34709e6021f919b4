"""A local OpenAI Realtime (GA) server for tests: WebSocket on 127.0.0.1, a free port, its own thread.

    with RealtimeServer() as server:
        server.script(speak("Hello, how can I help?"), tool("transfer_call", {"target": "sip:sales@example.com"}))
        ... point the agent at server.url ...
        assert server.violations == []

Each response (to `response.create`, or when the caller's speech ends and the session lets the server answer) takes
the next scripted `Act`; with none left it speaks `default_reply`. The server
- validates every client event against the GA reference's shapes (platform.openai.com/docs/api-reference/
  realtime-client-events): type, required and known fields, the session's audio formats, turn detection and tools,
  truncate bounds; a bad event gets an `error` event back and a line in `violations`;
- sends `session.created` on connect and `session.updated` for each `session.update`;
- runs an energy VAD on the appended audio: `input_audio_buffer.speech_started`, `speech_stopped`, `committed`;
- speaks replies (piper's voice) as `response.output_audio.delta` chunks of `chunk_ms`, paced to real time plus a
  `lead_ms` head start (the real service also sends faster than real time), with the transcript and item events;
- honours `response.cancel` (`response.done` with status `cancelled`) and records `conversation.item.truncate`;
- gives each session an `expires_at` `max_session_s` ahead and ends it then as the service does: an `error` with
  code `session_expired`, then a close with code 1001;
- with `audio.input.transcription` set, sends `conversation.item.input_audio_transcription.completed` for each
  committed caller turn, its transcript the next of `transcripts` (it has no ASR of its own) or `(inaudible)`;
- misbehaves on cue: `drop` the TCP connection or `stall` after some of a reply, or send `malformed` lines first.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from agents.speech.tts import PiperTts
from media.g711 import ulaw_decode, ulaw_encode
from media.resample import resample
from tests.servers.threaded import ThreadedServer

Fault = Literal["drop", "stall", "malformed"]


@dataclass(frozen=True)
class Act:
    """What the server does for one response: speak `text`, or call `tool`; optionally with a fault."""

    text: str = ""
    tool: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    fault: Fault | None = None
    fault_after_ms: int = 0


def speak(text: str) -> Act:
    return Act(text)


def tool(name: str, arguments: dict[str, Any]) -> Act:
    return Act(tool=name, arguments=arguments)


def drop(text: str, after_ms: int) -> Act:
    """Speak, and abort the TCP connection once `after_ms` of audio went out."""
    return Act(text, fault="drop", fault_after_ms=after_ms)


def stall(text: str, after_ms: int) -> Act:
    """Speak, and send nothing more (keeping the connection) once `after_ms` of audio went out."""
    return Act(text, fault="stall", fault_after_ms=after_ms)


def malformed(text: str) -> Act:
    """Speak, after a line that is not JSON, a JSON array, and a delta without its fields."""
    return Act(text, fault="malformed")


@dataclass
class Response:
    conn: int
    id: str
    item_id: str
    act: Act
    by: str
    """`client` (response.create) or `vad` (end of the caller's speech)."""
    created_t: float
    status: str = "in_progress"
    sent_ms: float = 0.0
    first_delta_t: float | None = None


@dataclass(frozen=True)
class Truncate:
    conn: int
    t: float
    item_id: str
    content_index: int
    audio_end_ms: int
    sent_ms: float
    """Audio of that item sent before the truncate arrived."""


@dataclass(frozen=True)
class Received:
    conn: int
    t: float
    type: str
    event: dict[str, Any]
    """The event, with `audio` replaced by about its decoded length."""


_SESSION_KEYS = {"type", "output_modalities", "model", "instructions", "audio", "include", "tracing", "tools",
                 "tool_choice", "max_output_tokens", "truncation", "prompt"}
_INPUT_KEYS = {"format", "transcription", "noise_reduction", "turn_detection"}
_OUTPUT_KEYS = {"format", "voice", "speed"}
_VAD_KEYS = {
    "server_vad": {"type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
                   "interrupt_response", "idle_timeout_ms"},
    "semantic_vad": {"type", "eagerness", "create_response", "interrupt_response"},
}
_CLIENT_EVENTS: dict[str, tuple[set[str], set[str]]] = {  # type -> (required, optional) besides type, event_id
    "session.update": ({"session"}, set()),
    "input_audio_buffer.append": ({"audio"}, set()),
    "input_audio_buffer.commit": (set(), set()),
    "input_audio_buffer.clear": (set(), set()),
    "output_audio_buffer.clear": (set(), set()),
    "conversation.item.create": ({"item"}, {"previous_item_id"}),
    "conversation.item.retrieve": ({"item_id"}, set()),
    "conversation.item.truncate": ({"item_id", "content_index", "audio_end_ms"}, set()),
    "conversation.item.delete": ({"item_id"}, set()),
    "response.create": (set(), {"response"}),
    "response.cancel": (set(), {"response_id"}),
}
_RESPONSE_KEYS = {"output_modalities", "instructions", "audio", "tools", "tool_choice", "max_output_tokens",
                  "conversation", "metadata", "prompt", "input"}
_FORMATS = {"audio/pcm": 24000, "audio/pcmu": 8000, "audio/pcma": 8000}
VAD_DB = -45.0
VAD_ONSET_MS = 60


class InvalidEventError(Exception):
    """A client event that does not follow the reference."""


def _check_format(where: str, fmt: object) -> None:
    if not isinstance(fmt, dict) or fmt.get("type") not in _FORMATS:
        raise InvalidEventError(f"{where}.format must be one of {sorted(_FORMATS)}, got {fmt!r}")
    extra = set(fmt) - {"type", "rate"}
    if extra or ("rate" in fmt and (fmt["type"] != "audio/pcm" or fmt["rate"] != 24000)):
        raise InvalidEventError(f"{where}.format: only audio/pcm takes a rate, and only 24000; got {fmt!r}")


def check_session(session: object) -> None:
    """Raise `InvalidEventError` unless `session` is a GA realtime session object (as sent in `session.update`)."""
    if not isinstance(session, dict):
        raise InvalidEventError("session must be an object")
    if session.get("type") != "realtime":
        raise InvalidEventError(f"session.type must be 'realtime', got {session.get('type')!r}")
    if unknown := set(session) - _SESSION_KEYS:
        raise InvalidEventError(f"unknown session fields {sorted(unknown)} (beta names?)")
    mods = session.get("output_modalities", ["audio"])
    if mods not in (["audio"], ["text"]):
        raise InvalidEventError(f"output_modalities must be ['audio'] or ['text'], got {mods!r}")
    audio = session.get("audio", {})
    if not isinstance(audio, dict) or set(audio) - {"input", "output"}:
        raise InvalidEventError(f"session.audio takes input and output, got {audio!r}")
    inp, out = audio.get("input", {}), audio.get("output", {})
    if set(inp) - _INPUT_KEYS or set(out) - _OUTPUT_KEYS:
        raise InvalidEventError(f"unknown audio fields {sorted((set(inp) - _INPUT_KEYS) | (set(out) - _OUTPUT_KEYS))}")
    for where, part in (("audio.input", inp), ("audio.output", out)):
        if "format" in part:
            _check_format(where, part["format"])
    turn = inp.get("turn_detection")
    if turn is not None:
        kind = turn.get("type") if isinstance(turn, dict) else None
        if kind not in _VAD_KEYS:
            raise InvalidEventError(f"turn_detection.type must be server_vad or semantic_vad, got {kind!r}")
        if unknown := set(turn) - _VAD_KEYS[kind]:
            raise InvalidEventError(f"turn_detection ({kind}) has unknown fields {sorted(unknown)}")
    for t in session.get("tools", []):
        if not (isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)
                and isinstance(t.get("parameters", {}), dict) and not set(t) - {"type", "name", "description",
                                                                                "parameters"}):
            raise InvalidEventError(f"a tool must be {{type: function, name, description?, parameters?}}, got {t!r}")


def check_event(ev: dict[str, Any]) -> None:
    """Raise `InvalidEventError` unless `ev` is a known client event with its required fields and no unknown ones."""
    kind = ev.get("type")
    if kind not in _CLIENT_EVENTS:
        raise InvalidEventError(f"unknown client event type {kind!r}")
    required, optional = _CLIENT_EVENTS[kind]
    if missing := required - set(ev):
        raise InvalidEventError(f"{kind}: missing {sorted(missing)}")
    if unknown := set(ev) - required - optional - {"type", "event_id"}:
        raise InvalidEventError(f"{kind}: unknown fields {sorted(unknown)}")
    if kind == "session.update":
        check_session(ev["session"])
    elif kind == "input_audio_buffer.append":
        try:
            base64.b64decode(ev["audio"], validate=True)
        except (binascii.Error, TypeError) as e:
            raise InvalidEventError(f"{kind}: audio is not base64 ({e})") from e
    elif kind == "conversation.item.truncate":
        if ev["content_index"] != 0 or not isinstance(ev["audio_end_ms"], int) or ev["audio_end_ms"] < 0:
            raise InvalidEventError(f"{kind}: content_index must be 0 and audio_end_ms an int >= 0, got {ev}")
    elif kind == "response.create" and (unknown := set(ev.get("response", {})) - _RESPONSE_KEYS):
        raise InvalidEventError(f"{kind}: unknown response fields {sorted(unknown)}")
    elif kind == "conversation.item.create":
        item = ev["item"]
        if item.get("type") == "function_call_output" and not (
                isinstance(item.get("call_id"), str) and isinstance(item.get("output"), str)):
            raise InvalidEventError(f"{kind}: a function_call_output needs call_id and output strings, got {item}")


_voice: PiperTts | None = None
_rendered: dict[str, bytes] = {}


def render(text: str) -> bytes:
    """`text` spoken by piper, PCM16 at 24 kHz (cached)."""
    global _voice
    if text not in _rendered:
        _voice = _voice or PiperTts()
        pcm, rate = _voice.synthesize(text)
        _rendered[text] = resample(pcm, rate, 24000)
    return _rendered[text]


class _Vad:
    """Energy VAD over 20 ms frames of the input buffer; reports (kind, ms) edges."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.frame = rate // 50 * 2
        self.buf = bytearray()
        self.frames = 0
        self.speaking = False
        self.run = 0  # frames in a row that disagree with `speaking`
        self.silence_ms = 500

    def feed(self, pcm: bytes) -> list[tuple[str, int]]:
        self.buf += pcm
        out: list[tuple[str, int]] = []
        while len(self.buf) >= self.frame:
            x = np.frombuffer(bytes(self.buf[: self.frame]), "<i2").astype(np.float64)
            del self.buf[: self.frame]
            self.frames += 1
            loud = 10 * np.log10((x**2).mean() / 32768.0**2 + 1e-12) > VAD_DB
            self.run = self.run + 1 if loud != self.speaking else 0
            need = VAD_ONSET_MS if not self.speaking else self.silence_ms
            if self.run * 20 >= need:
                self.speaking, self.run = not self.speaking, 0
                edge = self.frames * 20 - need
                out.append(("speech_started", max(0, edge - 300)) if self.speaking else ("speech_stopped", edge))
        return out


@dataclass
class _Conn:
    index: int
    ws: ServerConnection
    input_rate: int = 24000
    output: str = "audio/pcm"
    create_response: bool = True
    interrupt_response: bool = True
    transcribe: bool = False
    vad: _Vad = field(default_factory=lambda: _Vad(24000))
    response: Response | None = None
    task: asyncio.Task[None] | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: str = "client_cancelled"
    items: dict[str, Response] = field(default_factory=dict)
    calls: set[str] = field(default_factory=set)


class RealtimeServer(ThreadedServer):
    """Context manager: serves the Realtime protocol on a free port until exit."""

    def __init__(self, default_reply: str = "Sure. I can help you with that.", chunk_ms: int = 100,
                 lead_ms: int = 300) -> None:
        super().__init__("realtime-server")
        self.default_reply = default_reply
        self.chunk_ms = chunk_ms
        self.lead_ms = lead_ms
        self.connections = 0
        self.headers: list[dict[str, str]] = []
        self.received: list[Received] = []
        self.violations: list[str] = []
        self.responses: list[Response] = []
        self.cancels: list[tuple[int, float, str | None]] = []
        """(connection, time.time(), response_id) of each response.cancel."""
        self.truncates: list[Truncate] = []
        self.faults: list[tuple[int, float, Fault]] = []
        """(connection, time.time(), fault) when a scripted fault struck."""
        self.function_outputs: list[dict[str, Any]] = []
        self.speech: list[tuple[int, str, int]] = []
        self.audio_in: dict[int, bytearray] = {}
        """The caller's audio per connection, PCM16 at the session's input rate (`input_rates`)."""
        self.input_rates: dict[int, int] = {}
        self.max_session_s = 3600.0
        self.transcripts: deque[str] = deque()
        """What the caller said, in order, for the input transcription events."""
        self.expired: list[int] = []
        """Connections ended by `max_session_s`."""
        self._acts: deque[Act] = deque()
        self._ids = itertools.count(1)
        render(default_reply)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime"

    def reset(self) -> None:
        """Forget the script and everything recorded (between tests)."""
        self._acts.clear()
        for records in (self.headers, self.received, self.violations, self.responses, self.cancels, self.truncates,
                        self.faults, self.function_outputs, self.speech, self.expired):
            records.clear()
        self.transcripts.clear()
        self.max_session_s = 3600.0
        self.audio_in.clear()
        self.input_rates.clear()
        self.connections = 0

    def script(self, *acts: Act) -> None:
        """Queue what the next responses do (speech is rendered now, not while streaming)."""
        for act in acts:
            if act.text:
                render(act.text)
        self._acts.extend(acts)

    def wait_until(self, check: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    @contextlib.asynccontextmanager
    async def _listen(self) -> AsyncIterator[int]:
        async with serve(self._serve, "127.0.0.1", 0, compression=None, max_size=2**24) as server:
            yield next(iter(server.sockets)).getsockname()[1]

    # -- one connection -----------------------------------------------------------------------------------
    async def _serve(self, ws: ServerConnection) -> None:
        conn = _Conn(self.connections, ws)
        self.connections += 1
        self.headers.append({k.lower(): v for k, v in ws.request.headers.raw_items()} if ws.request else {})
        self.audio_in[conn.index] = bytearray()
        self.input_rates[conn.index] = conn.input_rate
        expires_at = time.time() + self.max_session_s
        expiry = asyncio.create_task(self._expire(conn, expires_at))
        try:
            await self._send(conn, {"type": "session.created",
                                    "session": self._session(conn, {"expires_at": int(expires_at)})})
            async for raw in ws:
                await self._on_message(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            expiry.cancel()
            if conn.task is not None:
                conn.task.cancel()

    async def _expire(self, conn: _Conn, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.time()))
        minutes = round(self.max_session_s / 60)
        message = f"Your session hit the maximum duration of {minutes} minutes."
        self.expired.append(conn.index)
        with contextlib.suppress(ConnectionClosed):
            err = {"type": "invalid_request_error", "code": "session_expired", "message": message, "param": None,
                   "event_id": None}
            await self._send(conn, {"type": "error", "error": err})
            await conn.ws.close(1001, message)

    def _session(self, conn: _Conn, update: dict[str, Any] | None = None) -> dict[str, Any]:
        s: dict[str, Any] = {"type": "realtime", "object": "realtime.session", "id": "sess_test",
                             "model": "gpt-realtime", "output_modalities": ["audio"]}
        return {**s, **(update or {})}

    async def _send(self, conn: _Conn, ev: dict[str, Any]) -> None:
        await conn.ws.send(json.dumps({"event_id": f"event_{next(self._ids)}", **ev}))

    async def _error(self, conn: _Conn, message: str, ev: dict[str, Any] | None, violation: bool = True) -> None:
        if violation:
            self.violations.append(message)
        err = {"type": "invalid_request_error", "code": None, "message": message, "param": None,
               "event_id": ev.get("event_id") if ev else None}
        await self._send(conn, {"type": "error", "error": err})

    async def _on_message(self, conn: _Conn, raw: str | bytes) -> None:
        try:
            ev = json.loads(raw)
            if not isinstance(ev, dict):
                raise ValueError("not an object")
        except ValueError:
            await self._error(conn, f"client sent a message that is not a JSON object: {str(raw)[:80]!r}", None)
            return
        shown = {k: (len(v) * 3 // 4 if k == "audio" and isinstance(v, str) else v) for k, v in ev.items()}
        self.received.append(Received(conn.index, time.time(), str(ev.get("type")), shown))
        try:
            check_event(ev)
        except InvalidEventError as e:
            await self._error(conn, str(e), ev)
            return
        kind = ev["type"]
        if kind == "session.update":
            await self._on_session(conn, ev["session"])
        elif kind == "input_audio_buffer.append":
            await self._on_audio(conn, base64.b64decode(ev["audio"]))
        elif kind == "response.create":
            if conn.response is not None:
                await self._error(conn, "conversation_already_has_active_response", ev)
            else:
                self._start(conn, "client")
        elif kind == "response.cancel":
            await self._on_cancel(conn, ev)
        elif kind == "conversation.item.truncate":
            await self._on_truncate(conn, ev)
        elif kind == "conversation.item.create":
            item = ev["item"]
            if item.get("type") == "function_call" and isinstance(item.get("call_id"), str):
                conn.calls.add(item["call_id"])  # a call made earlier, given as context
            if item.get("type") == "function_call_output":
                if item["call_id"] not in conn.calls:
                    await self._error(conn, f"function_call_output for unknown call_id {item['call_id']!r}", ev)
                    return
                self.function_outputs.append(item)
            await self._send(conn, {"type": "conversation.item.added", "previous_item_id": None,
                                    "item": {"id": f"item_c{next(self._ids)}", **item}})

    async def _on_session(self, conn: _Conn, session: dict[str, Any]) -> None:
        audio = session.get("audio", {})
        fmt = audio.get("input", {}).get("format")
        if fmt:
            conn.input_rate = _FORMATS[fmt["type"]]
            self.input_rates[conn.index] = conn.input_rate
            self.audio_in[conn.index] = bytearray()
            conn.vad = _Vad(conn.input_rate)
        out = audio.get("output", {}).get("format")
        if out:
            conn.output = out["type"]
        if "transcription" in audio.get("input", {}):
            conn.transcribe = bool(audio["input"]["transcription"])
        turn = audio.get("input", {}).get("turn_detection") or {}
        conn.create_response = turn.get("create_response", True)
        conn.interrupt_response = turn.get("interrupt_response", True)
        conn.vad.silence_ms = turn.get("silence_duration_ms", 500)
        await self._send(conn, {"type": "session.updated", "session": self._session(conn, session)})

    async def _on_audio(self, conn: _Conn, data: bytes) -> None:
        pcm = ulaw_decode(data) if conn.input_rate == 8000 else data
        self.audio_in[conn.index] += pcm
        for kind, ms in conn.vad.feed(pcm):
            item = f"item_u{next(self._ids)}"
            self.speech.append((conn.index, kind, ms))
            key = "audio_start_ms" if kind == "speech_started" else "audio_end_ms"
            await self._send(conn, {"type": f"input_audio_buffer.{kind}", key: ms, "item_id": item})
            if kind == "speech_started" and conn.response is not None and conn.interrupt_response:
                conn.cancel_reason = "turn_detected"
                conn.cancelled.set()
            if kind == "speech_stopped":
                await self._send(conn, {"type": "input_audio_buffer.committed", "previous_item_id": None,
                                        "item_id": item})
                if conn.transcribe:
                    said = self.transcripts.popleft() if self.transcripts else "(inaudible)"
                    await self._send(conn, {"type": "conversation.item.input_audio_transcription.completed",
                                            "item_id": item, "content_index": 0, "transcript": said,
                                            "usage": {"type": "duration", "seconds": round(ms / 1000, 1)}})
                if conn.create_response and conn.response is None:
                    self._start(conn, "vad")

    async def _on_cancel(self, conn: _Conn, ev: dict[str, Any]) -> None:
        rid = ev.get("response_id")
        self.cancels.append((conn.index, time.time(), rid))
        r = conn.response
        if r is None or (rid is not None and rid != r.id):
            await self._error(conn, f"no active response {rid!r} to cancel", ev, violation=False)
            return
        conn.cancelled.set()

    async def _on_truncate(self, conn: _Conn, ev: dict[str, Any]) -> None:
        r = conn.items.get(ev["item_id"])
        sent = r.sent_ms if r else 0.0
        self.truncates.append(Truncate(conn.index, time.time(), ev["item_id"], ev["content_index"],
                                       ev["audio_end_ms"], sent))
        if r is None or ev["audio_end_ms"] > sent:
            await self._error(conn, f"truncate of {ev['item_id']} to {ev['audio_end_ms']} ms: item unknown or only "
                                    f"{sent:.0f} ms sent", ev)
            return
        await self._send(conn, {"type": "conversation.item.truncated", "item_id": ev["item_id"],
                                "content_index": 0, "audio_end_ms": ev["audio_end_ms"]})

    # -- responses ----------------------------------------------------------------------------------------
    def _start(self, conn: _Conn, by: str) -> None:
        act = self._acts.popleft() if self._acts else Act(self.default_reply)
        r = Response(conn.index, f"resp_{next(self._ids)}", f"item_{next(self._ids)}", act, by, time.time())
        self.responses.append(r)
        conn.response = r
        conn.items[r.item_id] = r
        conn.cancelled = asyncio.Event()
        conn.cancel_reason = "client_cancelled"
        conn.task = asyncio.create_task(self._respond(conn, r))

    async def _respond(self, conn: _Conn, r: Response) -> None:
        base = {"response_id": r.id, "item_id": r.item_id, "output_index": 0}
        await self._send(conn, {"type": "response.created", "response": {
            "id": r.id, "object": "realtime.response", "status": "in_progress", "output": []}})
        if r.act.tool:
            item = {"id": r.item_id, "object": "realtime.item", "type": "function_call", "status": "completed",
                    "call_id": f"call_{next(self._ids)}", "name": r.act.tool, "arguments": json.dumps(r.act.arguments)}
            conn.calls.add(item["call_id"])
            await self._send(conn, {"type": "response.output_item.added", "response_id": r.id, "output_index": 0,
                                    "item": {**item, "status": "in_progress", "arguments": ""}})
            args = {"call_id": item["call_id"]}
            await self._send(conn, {"type": "response.function_call_arguments.delta", **base, **args,
                                    "delta": item["arguments"]})
            await self._send(conn, {"type": "response.function_call_arguments.done", **base, **args,
                                    "arguments": item["arguments"]})
            await self._send(conn, {"type": "response.output_item.done", "response_id": r.id, "output_index": 0,
                                    "item": item})
            await self._finish(conn, r, "completed", [item])
            return
        item = {"id": r.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": "in_progress", "content": []}
        await self._send(conn, {"type": "response.output_item.added", "response_id": r.id, "output_index": 0,
                                "item": item})
        if r.act.fault == "malformed":
            await conn.ws.send("{this is not json")
            await conn.ws.send("[1, 2, 3]")
            await self._send(conn, {"type": "response.output_audio.delta", "response_id": r.id})
        part = {**base, "content_index": 0}
        audio = render(r.act.text)
        if conn.output != "audio/pcm":
            audio = ulaw_encode(resample(audio, 24000, 8000))
        per_ms = 48 if conn.output == "audio/pcm" else 8
        words = r.act.text.split()
        step = self.chunk_ms * per_ms
        t0 = time.monotonic()
        for n, off in enumerate(range(0, len(audio), step)):
            ahead = (r.sent_ms - self.lead_ms) / 1000 - (time.monotonic() - t0)
            if ahead > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conn.cancelled.wait(), ahead)
            if conn.cancelled.is_set():
                break
            if r.act.fault in ("drop", "stall") and r.sent_ms >= r.act.fault_after_ms:
                self.faults.append((conn.index, time.time(), r.act.fault))
                if r.act.fault == "drop":
                    conn.ws.transport.abort()
                else:
                    await conn.cancelled.wait()
                return
            chunk = audio[off : off + step]
            await self._send(conn, {"type": "response.output_audio.delta", **part,
                                    "delta": base64.b64encode(chunk).decode()})
            r.first_delta_t = r.first_delta_t or time.time()
            r.sent_ms += len(chunk) / per_ms
            lo, hi = n * len(words) * step // len(audio), (n + 1) * len(words) * step // len(audio)
            if hi > lo:
                await self._send(conn, {"type": "response.output_audio_transcript.delta", **part,
                                        "delta": " ".join(words[lo:hi]) + " "})
        cancelled = conn.cancelled.is_set()
        await self._send(conn, {"type": "response.output_audio.done", **part})
        await self._send(conn, {"type": "response.output_audio_transcript.done", **part, "transcript": r.act.text})
        done_item = {**item, "status": "incomplete" if cancelled else "completed",
                     "content": [{"type": "output_audio", "transcript": r.act.text}]}
        await self._send(conn, {"type": "response.output_item.done", "response_id": r.id, "output_index": 0,
                                "item": done_item})
        await self._finish(conn, r, "cancelled" if cancelled else "completed", [done_item])

    async def _finish(self, conn: _Conn, r: Response, status: str, output: list[dict[str, Any]]) -> None:
        r.status = status
        conn.response = None
        details = {"type": "cancelled", "reason": conn.cancel_reason} if status == "cancelled" else None
        await self._send(conn, {"type": "response.done", "response": {
            "id": r.id, "object": "realtime.response", "status": status, "status_details": details,
            "output": output}})
