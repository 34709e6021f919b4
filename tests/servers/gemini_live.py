"""A local Gemini Live server for tests: the documented `BidiGenerateContent` WebSocket protocol on 127.0.0.1, in its
own thread (schema: https://ai.google.dev/api/live, https://ai.google.dev/gemini-api/docs/live-session).

    with GeminiLiveServer() as server:
        server.script(Reply("Hello there."), Reply(misbehave="drop", down_s=1.5))
        ... point the agent at server.url ...
        assert server.violations == []

It checks every client message against the schema (a violation is recorded, never raised), answers `setup` with
`setupComplete`, finds the caller's turns with a simple energy VAD (or the client's `activityStart`/`activityEnd`
when automatic activity detection is off), and answers each turn, text turn and tool response with real speech
(piper, resampled to 24 kHz) streamed as `serverContent.modelTurn` chunks in real time, then `generationComplete`,
`turnComplete` and a new `sessionResumptionUpdate` handle. Caller speech over a reply gets `interrupted`. Each
scripted `Reply` can misbehave: `go_away` (then close), `drop` mid-reply (and refuse connections for `down_s`),
`malformed` messages first, `stall` mid-reply, or `tool_call`; a reply interrupted while its tool calls wait for
their responses sends `toolCallCancellation` with their ids (a late `toolResponse` for one is a violation).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import re
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, Self

import numpy as np
import soxr
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from agents.speech.tts import PiperTts
from tests.servers.threaded import ThreadedServer

PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
IN_MIME = "audio/pcm;rate=16000"
OUT_RATE = 24000
OUT_MIME = f"audio/pcm;rate={OUT_RATE}"
CHUNK_MS = 40
LEAD_S = 0.2
"""Reply audio is sent this far ahead of real time."""
VAD_DB = -45.0
ONSET_MS = 60
END_MS = 500
"""Automatic activity detection: speech after `ONSET_MS` above `VAD_DB`, end after `END_MS` below."""
SETUP_DELAY_S = 0.05
"""Wait before `setupComplete`, so a client that does not wait for it is caught."""
DEFAULT_REPLY = "Thank you, I heard you. I am the test model, and this is my spoken answer."
AFTER_TOOL = {"ok": "That is done.", "error": "Sorry, that did not work."}

SETUP_KEYS = {"model", "generationConfig", "systemInstruction", "tools", "realtimeInputConfig", "sessionResumption",
              "contextWindowCompression", "inputAudioTranscription", "outputAudioTranscription", "proactivity",
              "enableAffectiveDialog"}
REALTIME_KEYS = {"audio", "video", "text", "activityStart", "activityEnd", "audioStreamEnd", "mediaChunks"}
CLIENT_KEYS = {"setup", "clientContent", "realtimeInput", "toolResponse"}
TURN_COVERAGE = {"TURN_INCLUDES_ONLY_ACTIVITY", "TURN_INCLUDES_ALL_INPUT", "TURN_INCLUDES_AUDIO_ACTIVITY_AND_ALL_VIDEO"}
ACTIVITY_HANDLING = {"START_OF_ACTIVITY_INTERRUPTS", "NO_INTERRUPTION"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")

Misbehave = Literal["go_away", "drop", "malformed", "stall", "tool_call"]


@dataclass(frozen=True)
class Reply:
    """One answer; `misbehave` says how it goes wrong."""

    text: str = DEFAULT_REPLY
    misbehave: Misbehave | None = None
    tools: tuple[tuple[str, dict[str, Any]], ...] = (("transfer_call", {}),)
    """`tool_call`: function calls (name, args) made one by one after the text is spoken, each answered by the
    client's toolResponse and a short spoken follow-up."""
    down_s: float = 0.0
    """`drop`: refuse new connections this long."""
    time_left_s: float = 1.0
    """`go_away`: close the connection this long after the goAway."""


@dataclass
class Session:
    """What one connection saw."""

    setup: dict[str, Any]
    resumed_from: str | None
    started: float
    counts: dict[str, int] = field(default_factory=dict)
    audio_chunk_ms: list[float] = field(default_factory=list)
    audio_in_ms: float = 0.0
    turns: int = 0
    """Caller turns ended (by activityEnd or the VAD)."""
    replies: list[str] = field(default_factory=list)
    interrupted: int = 0
    texts: list[str] = field(default_factory=list)
    """Text turns (`clientContent`) the client sent."""
    tool_responses: list[dict[str, Any]] = field(default_factory=list)
    closed: str = ""
    handles: list[str] = field(default_factory=list)
    """Resumption handles issued on this connection."""
    first_audio_after_turn_ms: list[float] = field(default_factory=list)
    """Server side: from the end of a caller turn to the first reply chunk sent."""
    first_chunk_wall: list[float] = field(default_factory=list)
    """Wall time (time.time()) each reply's first audio chunk was sent."""


class _Conn:
    """Per-connection state."""

    def __init__(self, ws: ServerConnection, session: Session) -> None:
        self.ws = ws
        self.s = session
        auto = (session.setup.get("realtimeInputConfig") or {}).get("automaticActivityDetection") or {}
        self.auto = not auto.get("disabled", False)
        self.resumable = "sessionResumption" in session.setup
        self.active = False
        self.run_ms = 0
        self.quiet_ms = 0
        self.in_speech = False
        self.responding: asyncio.Task[None] | None = None
        self.interrupting = False
        self.turn_end = 0.0
        self.stalled = False
        self.tools: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}


class GeminiLiveServer(ThreadedServer):
    """Context manager: serves on a free port until exit."""

    def __init__(self, api_key: str | None = None) -> None:
        super().__init__("gemini-live")
        self.api_key = api_key
        self.violations: list[str] = []
        self.sessions: list[Session] = []
        self.handles: list[str] = []
        self.refused = 0
        self.log: list[tuple[float, str, str]] = []
        """(time.time(), event, detail) of what the server did: reply, interrupted, tool_call, go_away, drop, stall."""
        self._script: deque[Reply] = deque()
        self._down_until = 0.0
        self._pcm: dict[str, bytes] = {}
        self._tts = PiperTts()
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{PATH}"

    def script(self, *replies: Reply) -> None:
        """Answers for the next turns, in order (then `Reply()`), replacing what is left of an earlier script;
        their speech is rendered now."""
        for r in replies:
            self.render(r.text)
        self._script = deque(replies)

    def render(self, text: str) -> bytes:
        """Piper speech for `text` at 24 kHz PCM16 (cached)."""
        if text not in self._pcm:
            pcm, rate = self._tts.synthesize(text)
            x = np.frombuffer(pcm, dtype="<i2")
            self._pcm[text] = soxr.resample(x, rate, OUT_RATE).astype("<i2").tobytes()
        return self._pcm[text]

    def wait_for(self, check: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.05)
        return bool(check())

    def __enter__(self) -> Self:
        for text in (DEFAULT_REPLY, *AFTER_TOOL.values()):
            self.render(text)
        return super().__enter__()

    # -- serving ----------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _listen(self) -> AsyncIterator[int]:
        async with serve(self._serve, "127.0.0.1", 0, process_request=self._admit, compression=None,
                         max_size=None) as server:
            yield next(iter(server.sockets)).getsockname()[1]

    def _admit(self, ws: ServerConnection, request: Request) -> Response | None:
        url = urllib.parse.urlsplit(request.path)
        if url.path != PATH:
            return ws.respond(HTTPStatus.NOT_FOUND, f"no endpoint {url.path}\n")
        if time.monotonic() < self._down_until:
            self.refused += 1
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "down for the test\n")
        key = urllib.parse.parse_qs(url.query).get("key", [None])[0]
        if self.api_key is not None and key != self.api_key:
            self._violate("handshake", f"key={key!r}, expected the configured API key")
            return ws.respond(HTTPStatus.FORBIDDEN, "bad API key\n")
        return None

    def _note(self, event: str, detail: str = "") -> None:
        self.log.append((time.time(), event, detail))

    def when(self, event: str) -> list[float]:
        return [t for t, e, _ in self.log if e == event]

    def _violate(self, where: str, what: str) -> None:
        self.violations.append(f"{where}: {what}")

    async def _serve(self, ws: ServerConnection) -> None:
        try:
            setup = self._check_setup(await _recv(ws))
        except (ConnectionClosed, ValueError) as e:
            self._violate("setup", str(e))
            await ws.close(1007, "setup expected")
            return
        handle = (setup.get("sessionResumption") or {}).get("handle")
        if handle is not None and handle not in self.handles:
            self._violate("setup", f"unknown resumption handle {handle!r}")
        conn = _Conn(ws, Session(setup, handle, time.monotonic()))
        self.sessions.append(conn.s)
        early: str | bytes | None = None
        try:
            early = await asyncio.wait_for(ws.recv(), SETUP_DELAY_S)
            self._violate("setup", "client sent a message before setupComplete")
        except TimeoutError:
            pass
        try:
            await self._send(conn, {"setupComplete": {}})
            await self._new_handle(conn)
            if early is not None:
                await self._on_message(conn, early)
            async for raw in ws:
                await self._on_message(conn, raw)
            conn.s.closed = f"client closed ({ws.close_code})"
        except ConnectionClosed as e:
            conn.s.closed = f"connection closed ({e})"
        finally:
            if conn.responding is not None:
                conn.responding.cancel()

    def _check_setup(self, msg: dict[str, Any]) -> dict[str, Any]:
        if set(msg) != {"setup"}:
            raise ValueError(f"first message must be only `setup`, got {sorted(msg)}")
        s = msg["setup"]
        if not isinstance(s, dict):
            raise ValueError("setup is not an object")
        for k in set(s) - SETUP_KEYS:
            self._violate("setup", f"unknown field {k!r}")
        if not (isinstance(s.get("model"), str) and s["model"].startswith("models/")):
            self._violate("setup", f"model must be 'models/...', got {s.get('model')!r}")
        gen = s.get("generationConfig") or {}
        if gen.get("responseModalities") != ["AUDIO"]:
            self._violate("setup", f"responseModalities {gen.get('responseModalities')!r}, expected ['AUDIO']")
        voice = ((gen.get("speechConfig") or {}).get("voiceConfig") or {}).get("prebuiltVoiceConfig")
        if voice is not None and not isinstance(voice.get("voiceName"), str):
            self._violate("setup", "speechConfig.voiceConfig.prebuiltVoiceConfig.voiceName is not a string")
        si = s.get("systemInstruction")
        if si is not None and not all(isinstance(p.get("text"), str) for p in si.get("parts", [None])):
            self._violate("setup", "systemInstruction must be {parts: [{text}]}")
        for tool in s.get("tools") or []:
            for fd in tool.get("functionDeclarations") or []:
                if not _NAME.fullmatch(str(fd.get("name", ""))):
                    self._violate("setup", f"bad function name {fd.get('name')!r}")
                params = fd.get("parameters")
                if params is not None and params.get("type") not in ("OBJECT", "object"):
                    self._violate("setup", f"function {fd.get('name')!r}: parameters must be an OBJECT schema")
                schema = fd.get("parametersJsonSchema")  # JSON Schema, mutually exclusive with parameters
                if schema is not None and (params is not None or schema.get("type") != "object"):
                    self._violate("setup", f"function {fd.get('name')!r}: parametersJsonSchema must be an object "
                                           "schema, without parameters")
        rt = s.get("realtimeInputConfig") or {}
        aad = rt.get("automaticActivityDetection") or {}
        if "disabled" in aad and not isinstance(aad["disabled"], bool):
            self._violate("setup", "automaticActivityDetection.disabled is not a bool")
        if "turnCoverage" in rt and rt["turnCoverage"] not in TURN_COVERAGE:
            self._violate("setup", f"turnCoverage {rt['turnCoverage']!r}")
        if "activityHandling" in rt and rt["activityHandling"] not in ACTIVITY_HANDLING:
            self._violate("setup", f"activityHandling {rt['activityHandling']!r}")
        sr = s.get("sessionResumption")
        if sr is not None and not (isinstance(sr, dict) and isinstance(sr.get("handle", ""), str)):
            self._violate("setup", f"sessionResumption must be {{handle?: string}}, got {sr!r}")
        cw = s.get("contextWindowCompression")
        if cw is not None and not (isinstance(cw, dict) and ("slidingWindow" in cw or "triggerTokens" in cw)):
            self._violate("setup", f"contextWindowCompression {cw!r}")
        return s

    async def _on_message(self, conn: _Conn, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            self._violate("message", f"not JSON: {raw[:60]!r}")
            return
        keys = set(msg) if isinstance(msg, dict) else set()
        if len(keys) != 1 or not keys <= CLIENT_KEYS:
            self._violate("message", f"must have exactly one of {sorted(CLIENT_KEYS)}, got {sorted(keys)}")
            return
        kind = keys.pop()
        conn.s.counts[kind] = conn.s.counts.get(kind, 0) + 1
        body = msg[kind]
        if kind == "setup":
            self._violate("setup", "sent twice")
        elif kind == "realtimeInput":
            self._realtime(conn, body)
        elif kind == "clientContent":
            self._client_content(conn, body)
        else:
            self._tool_response(conn, body)

    def _realtime(self, conn: _Conn, body: Any) -> None:
        keys = set(body) if isinstance(body, dict) else set()
        if len(keys) != 1 or not keys <= REALTIME_KEYS:
            self._violate("realtimeInput", f"must have exactly one of {sorted(REALTIME_KEYS)}, got {sorted(keys)}")
            return
        if "audio" in body:
            self._audio(conn, body["audio"])
        elif "activityStart" in body or "activityEnd" in body:
            start = "activityStart" in body
            if conn.auto:
                self._violate("realtimeInput", "activity signals while automatic activity detection is on")
            elif start == conn.active:
                self._violate("realtimeInput", f"{'activityStart' if start else 'activityEnd'} twice in a row")
            conn.active = start
            if start:
                self._interrupt(conn)
            else:
                self._turn_ended(conn)

    def _audio(self, conn: _Conn, blob: Any) -> None:
        if not isinstance(blob, dict) or set(blob) != {"data", "mimeType"}:
            self._violate("realtimeInput.audio", f"must be a Blob {{data, mimeType}}, got {blob!r:.80}")
            return
        if blob["mimeType"] != IN_MIME:
            self._violate("realtimeInput.audio", f"mimeType {blob['mimeType']!r}, expected {IN_MIME!r}")
        try:
            pcm = base64.b64decode(blob["data"], validate=True)
        except (binascii.Error, TypeError):
            self._violate("realtimeInput.audio", "data is not base64")
            return
        if len(pcm) % 2:
            self._violate("realtimeInput.audio", f"odd byte count {len(pcm)}")
            return
        ms = len(pcm) / 32
        conn.s.audio_chunk_ms.append(ms)
        conn.s.audio_in_ms += ms
        if conn.auto:
            x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
            for i in range(0, len(x) - 319, 320):
                self._vad(conn, float(10 * np.log10(np.mean(x[i : i + 320] ** 2) / 32768.0**2 + 1e-12)) > VAD_DB)

    def _vad(self, conn: _Conn, speech: bool) -> None:
        if speech:
            conn.run_ms += 20
            conn.quiet_ms = 0
            if not conn.in_speech and conn.run_ms >= ONSET_MS:
                conn.in_speech = True
                self._interrupt(conn)
        else:
            conn.run_ms = 0
            conn.quiet_ms += 20
            if conn.in_speech and conn.quiet_ms >= END_MS:
                conn.in_speech = False
                self._turn_ended(conn)

    def _client_content(self, conn: _Conn, body: Any) -> None:
        turns = body.get("turns") if isinstance(body, dict) else None
        if not isinstance(turns, list):
            self._violate("clientContent", f"turns must be a list, got {body!r:.80}")
            return
        for t in turns:
            parts = t.get("parts") if isinstance(t, dict) else None
            if not isinstance(t, dict) or t.get("role") not in ("user", "model") or not isinstance(parts, list):
                self._violate("clientContent", f"bad turn {t!r:.80}")
                continue
            conn.s.texts.extend(str(p.get("text")) for p in parts if isinstance(p, dict))
        if body.get("turnComplete"):
            self._interrupt(conn)
            self._turn_ended(conn, caller=False)

    def _tool_response(self, conn: _Conn, body: Any) -> None:
        responses = body.get("functionResponses") if isinstance(body, dict) else None
        if not isinstance(responses, list) or not responses:
            self._violate("toolResponse", f"functionResponses must be a non-empty list, got {body!r:.80}")
            return
        for r in responses:
            if not isinstance(r, dict) or not isinstance(r.get("response"), dict):
                self._violate("toolResponse", f"each response needs id, name and a response object: {r!r:.80}")
                continue
            pending = conn.tools.pop(str(r.get("id")), None)
            if pending is None:
                self._violate("toolResponse", f"no pending call with id {r.get('id')!r}")
                continue
            if r.get("name") != pending[0]:
                self._violate("toolResponse", f"name {r.get('name')!r} for a call to {pending[0]!r}")
            conn.s.tool_responses.append(r)
            if not pending[1].done():
                pending[1].set_result(r["response"])

    # -- answering --------------------------------------------------------------------------------------
    def _turn_ended(self, conn: _Conn, caller: bool = True) -> None:
        """The user's turn is complete: answer it (`caller`: a spoken turn, else a text turn)."""
        conn.s.turns += caller
        conn.turn_end = time.monotonic()
        reply = self._script.popleft() if self._script else Reply()
        conn.responding = asyncio.create_task(self._respond(conn, reply, conn.responding))

    def _interrupt(self, conn: _Conn) -> None:
        if conn.responding is not None and not conn.responding.done() and not conn.interrupting:
            conn.interrupting = True
            conn.s.interrupted += 1
            conn.responding.cancel()

    async def _respond(self, conn: _Conn, reply: Reply, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        try:
            await self._reply(conn, reply)
        except asyncio.CancelledError:
            if conn.interrupting:
                conn.interrupting = False
                self._note("interrupted")
                with contextlib.suppress(ConnectionClosed):
                    await self._send(conn, {"serverContent": {"interrupted": True}})
                    if conn.tools:  # calls of the interrupted turn: no toolResponse is wanted any more
                        ids = list(conn.tools)
                        conn.tools.clear()
                        self._note("tool_cancelled", ",".join(ids))
                        await self._send(conn, {"toolCallCancellation": {"ids": ids}})
                    await self._send(conn, {"serverContent": {"turnComplete": True}})
            raise
        except ConnectionClosed:
            pass

    async def _reply(self, conn: _Conn, reply: Reply) -> None:
        conn.s.replies.append(reply.text)
        self._note("reply", reply.text)
        if reply.misbehave == "malformed":
            for bad in ("{not json", "[1, 2]", json.dumps({"serverContent": {"modelTurn": {"parts": [
                    {"inlineData": {"mimeType": OUT_MIME, "data": "!!not base64!!"}}]}}}),
                    json.dumps({"serverContent": "nonsense"}), json.dumps({"unknownMessage": {}})):
                await conn.ws.send(bad)
        await self._send(conn, {"serverContent": {"outputTranscription": {"text": reply.text}}})
        cut = reply.misbehave in ("drop", "stall")
        await self._speak(conn, self.render(reply.text), half=cut)
        if cut:
            self._note(reply.misbehave or "")
            if reply.misbehave == "drop":
                self._down_until = time.monotonic() + reply.down_s
                conn.ws.transport.abort()
            else:
                conn.stalled = True
            return
        for name, args in reply.tools if reply.misbehave == "tool_call" else ():
            cid = f"call-{next(self._ids)}"
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            conn.tools[cid] = (name, fut)
            self._note("tool_call", name)
            await self._send(conn, {"toolCall": {"functionCalls": [{"id": cid, "name": name, "args": args}]}})
            result = await fut
            follow = AFTER_TOOL["error" if "error" in result else "ok"]
            conn.s.replies.append(follow)
            await self._speak(conn, self.render(follow), half=False)
        await self._send(conn, {"serverContent": {"generationComplete": True}})
        await asyncio.sleep(LEAD_S)  # the model waits for playback before it completes the turn
        await self._send(conn, {"serverContent": {"turnComplete": True}})
        await self._new_handle(conn)
        if reply.misbehave == "go_away":
            self._note("go_away")
            await self._send(conn, {"goAway": {"timeLeft": f"{reply.time_left_s:g}s"}})
            await asyncio.sleep(reply.time_left_s)
            await conn.ws.close(1000, "go away")

    async def _speak(self, conn: _Conn, pcm: bytes, half: bool) -> None:
        """Stream `pcm` in real time (LEAD_S ahead); only its first half with `half`."""
        step = OUT_RATE * 2 * CHUNK_MS // 1000
        chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
        if half:
            chunks = chunks[: len(chunks) // 2]
        t0 = time.monotonic()
        for i, chunk in enumerate(chunks):
            await asyncio.sleep(max(0.0, t0 + i * CHUNK_MS / 1000 - LEAD_S - time.monotonic()))
            if i == 0 and conn.turn_end:
                conn.s.first_audio_after_turn_ms.append(round((time.monotonic() - conn.turn_end) * 1000, 1))
            data = base64.b64encode(chunk).decode()
            await self._send(conn, {"serverContent": {"modelTurn": {"parts": [
                {"inlineData": {"mimeType": OUT_MIME, "data": data}}]}}})
            if i == 0:
                conn.s.first_chunk_wall.append(time.time())

    async def _new_handle(self, conn: _Conn) -> None:
        if conn.resumable:
            handle = f"handle-{next(self._ids)}"
            self.handles.append(handle)
            conn.s.handles.append(handle)
            await self._send(conn, {"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})

    async def _send(self, conn: _Conn, msg: dict[str, Any]) -> None:
        if not conn.stalled:
            await conn.ws.send(json.dumps(msg))


async def _recv(ws: ServerConnection) -> dict[str, Any]:
    raw = await ws.recv()
    msg = json.loads(raw)
    if not isinstance(msg, dict):
        raise ValueError(f"client sent {type(msg).__name__}, not an object")
    return msg
