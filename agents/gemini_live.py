"""Gemini Live backend: the caller's 16 kHz audio streams to a `BidiGenerateContent` WebSocket, the model's 24 kHz
audio plays back, tool calls become call actions, and the session survives reconnects.

Protocol (camelCase JSON over one WebSocket) as documented in https://ai.google.dev/api/live (messages),
https://ai.google.dev/gemini-api/docs/live-session (`sessionResumption`, `goAway`, `contextWindowCompression`) and
https://ai.google.dev/gemini-api/docs/live-tools (function calling):
- client: `setup` first, then nothing until `setupComplete`; `realtimeInput` with one of `audio` (a Blob,
  `audio/pcm;rate=16000`), `activityStart`, `activityEnd`; `clientContent` {turns, turnComplete};
  `toolResponse` {functionResponses: [{id, name, response}]}.
- server: `serverContent` {modelTurn.parts[].inlineData (`audio/pcm;rate=24000`), interrupted, generationComplete,
  turnComplete, inputTranscription, outputTranscription}; `toolCall` {functionCalls: [{id, name, args}]};
  `toolCallCancellation` {ids}; `sessionResumptionUpdate` {newHandle, resumable}; `goAway` {timeLeft}.
  A cancelled call takes no `toolResponse`; the docs leave undoing its side effects to the client. A business
  tool that is not idempotent is not cut off once its request is made (agents.tools), so its result is told to the
  model as context instead.

Turn ownership: `gateway` turns the server's activity detection off and sends `activityStart` when the gateway's VAD
hears the caller (over our audio: on a confirmed barge-in) and `activityEnd` after `turn_end_ms` of silence (the
user's turn covers all input, so audio sent before `activityStart` counts);
`server` leaves turns to the model, whose `interrupted` flushes our playout. Whichever of the gateway's `BargeIn` and
the server's `interrupted` comes first drops the rest of that model turn; the other is then a no-op.

Connection: the latest resumption handle is kept. On `goAway` the model turn in flight finishes, then the agent
reconnects with the handle; a dropped or stalled connection is reconnected at once, then with backoff, and an outage
longer than `apology_after_s` gets a spoken apology. Caller audio is buffered meanwhile (`BACKLOG_S`), and a model
turn cut by the loss is asked to continue. With a `fallback` cascade, a refused connect (or `reconnect_attempts`
failed ones in a row) gets the apology at once and the cascade carries the call on (agents.s2s_fallback); without,
the agent keeps trying. Malformed server messages are logged and ignored.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import os
import re
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

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
from agents.speech.tts import PromptCache
from agents.tools import RECORDING_TOOLS, CallTools, ToolConfig, ToolRunner
from agents.transfer_headers import GEMINI_SCHEMA, HeaderError, transfer_headers, uri_with_headers
from media.frames import FRAME_BYTES, FRAME_MS, SAMPLE_RATE
from media.polyphase import PolyphaseResampler

if TYPE_CHECKING:
    from agents.session import TakesOver

DEFAULT_URL = (
    "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
)
INPUT_MIME = f"audio/pcm;rate={SAMPLE_RATE}"
BACKLOG_S = 5.0
"""Caller audio kept while the connection is down, sent on reconnect."""
MAX_BACKOFF_S = 8.0
POLL_S = 0.1
TRANSFER_TIMEOUT_S = 30.0
RESUME_TEXT = (
    "(The line dropped, so the caller may not have heard your last answer in full. "
    "Continue briefly from where it broke off.)"
)
TOOLS: list[dict[str, Any]] = [
    {
        "name": "transfer_call",
        "description": "Transfer the caller to a person or another number (blind transfer). Say so first.",
        "parameters": {"type": "OBJECT", "properties": {
            "target": {"type": "STRING", "description": "SIP URI to transfer to; omit it for the default operator."},
            "headers": GEMINI_SCHEMA,
        }},
    },
    {"name": "end_call", "description": "Hang up the call, after you have said goodbye."},
    {
        "name": "send_dtmf",
        "description": "Send touch-tone digits on the call (0-9, *, #, A-D), for example to work a phone menu.",
        "parameters": {"type": "OBJECT", "properties": {"digits": {"type": "STRING"}}, "required": ["digits"]},
    },
    *({"name": name, "description": desc} for name, desc in RECORDING_TOOLS.items()),
]
_DTMF = re.compile(r"[0-9*#A-D]{1,32}")
_SIP_URI = re.compile(r"(sips?|tel):\S+")
_RATE = re.compile(r"audio/pcm(?:;\s*rate=(\d+))?$")

log = logging.getLogger("voicegate.gemini_live")


def _event(event: str, /, **fields: object) -> None:
    """One JSON log line, in the gateway's event format (and its sinks get it)."""
    emit(log, logging.INFO, event, fields)


class GeminiLiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["gemini_live"]
    url: str = DEFAULT_URL
    api_key_env: str | None = "GEMINI_API_KEY"
    """Environment variable holding the API key, sent as the `key` query parameter (None: send no key)."""
    model: str = "models/gemini-2.5-flash-native-audio-preview-12-2025"
    voice: str = "Puck"
    """Prebuilt voice name."""
    instructions: str = (
        "You are a helpful phone assistant. Answer in one or two short spoken sentences; no lists or markdown."
    )
    greeting: str | None = "Greet the caller in one short sentence and ask how you can help."
    """Text turn sent when the call starts so the model speaks first (None: wait for the caller)."""
    turn_owner: Literal["gateway", "server"] = "gateway"
    """Who decides turns and interruptions: the gateway's VAD and barge-in, or the model's activity detection."""
    turn_end_ms: int = Field(600, ge=300, le=3000)
    """Gateway-owned turns: the caller's turn ends (activityEnd) after this much silence."""
    transfer_target: str | None = None
    """SIP URI for the transfer_call tool when the model names none."""
    apology: str = "Sorry, I am having trouble with the line. One moment please."
    apology_after_s: float = Field(0.5, gt=0, le=5)
    """Say `apology` when the connection has been down this long."""
    connect_timeout_s: float = Field(5.0, gt=0)
    """For the WebSocket handshake plus `setupComplete`."""
    response_timeout_s: float = Field(5.0, gt=0)
    """A reply owed (after activityEnd, a text turn or a tool response) or a model turn being generated that gets no
    server message this long counts as a stalled connection."""
    send_ms: int = Field(40, ge=20, le=100, multiple_of=FRAME_MS)
    """Caller audio is sent in chunks this long."""
    tools: tuple[str, ...] = ()
    """Business tools (names in the top-level `tools`), offered besides the call actions."""
    fallback: str | None = None
    """A configured cascaded agent that carries the call on, with the conversation so far, when the server is dead
    (a refused connect, or `reconnect_attempts` failed connects in a row); none: the agent keeps trying."""
    reconnect_attempts: int = Field(4, ge=0, le=20)
    """With `fallback`: failed connects in a row (besides a refused one) before the call moves there."""

    @field_validator("url")
    @classmethod
    def _ws_url(cls, v: str) -> str:
        if not v.startswith(("ws://", "wss://")):
            raise ValueError(f"url must be a ws:// or wss:// URL, got {v!r}")
        return v


@dataclass
class _Turn:
    """One model turn as it arrives: its audio resampled to 16 kHz and queued for playout, and its timings."""

    trigger: str
    """What the model answers: speech, greeting, dtmf, tool or resume."""
    since: float
    """The caller's speech end or when the request went out (monotonic s)."""
    first_rx: float | None = None
    first_enq: float | None = None
    rx_ms: float = 0.0
    text: str = ""
    dropped_by: str = ""
    generated: bool = False
    resampler: PolyphaseResampler | None = None
    rate: int = 0
    rest: bytes = b""


def _parse(raw: str | bytes) -> dict[str, Any] | None:
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        _event("gemini_bad_message", error=f"server sent invalid JSON: {e}", sample=str(raw[:80]))
        return None
    if not isinstance(msg, dict):
        _event("gemini_bad_message", error="server sent a JSON value that is not an object", sample=str(raw[:80]))
        return None
    return msg


def _seconds(d: object) -> float:
    """A protobuf JSON Duration ("1.5s") or a number, in seconds."""
    if isinstance(d, int | float):
        return float(d)
    if isinstance(d, str) and d.endswith("s"):
        return float(d[:-1])
    raise ValueError(f"server sent a bad duration {d!r}")


def _pcm_rate(mime: str) -> int:
    m = _RATE.match(mime.replace(" ", ""))
    if m is None:
        raise ValueError(f"server sent audio as {mime!r}, not audio/pcm")
    return int(m.group(1) or 24000)


class GeminiLiveAgent(Agent):
    def __init__(self, factory: GeminiLiveFactory, handover: Handover | None = None) -> None:
        self.cfg = factory.cfg
        self.tools = factory.tools
        """The business tools offered (agents.tools)."""
        self._business: CallTools | None = None
        self.handover = handover
        """A call taken over: the first connection sends the conversation so far and asks for the answer, with no
        greeting (a resumed session keeps it)."""
        self.handle: str | None = None
        self.connections = 0
        self._call: CallControl | None = None
        self._ws: ClientConnection | None = None
        self._gen = 0
        self._outbox: deque[tuple[str, int | None, float | None]] = deque(
            maxlen=int(BACKLOG_S * 1000 / self.cfg.send_ms) + 32)
        """Serialized messages not sent yet: (text, only on this connection, end time of the audio in it)."""
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._batch: list[bytes] = []
        self._batch_end = 0.0
        self._turn: _Turn | None = None
        self._request: tuple[str, float] | None = None
        self._owed_since: float | None = None
        self._last_rx = 0.0
        self._speech_end = 0.0
        self._heard = ""
        self._active = False
        self._caller_quiet = False
        self._cut = False
        self._greeted = False
        self._down_since: float | None = None
        self._apology: asyncio.Task[None] | None = None
        self._transfer: asyncio.Future[int | None] | None = None
        self._tools: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._last_played: asyncio.Future[Played] | None = None
        self._lag_ms = 0.0
        self.fallback = factory.fallback
        self._fell_back: str | None = None  # why the call moves to the fallback
        self._said: asyncio.Future[Played] | None = None  # the apology of this outage, once said
        self._records: list[dict[str, Any]] = []  # this agent's turn records, for the fallback's handover

    @property
    def call(self) -> CallControl:
        assert self._call is not None
        return self._call

    async def run(self, call: CallControl) -> None:
        self._call = call
        self._down_since = time.monotonic()
        runner = ToolRunner(self.tools, list(self.tools)) if self.tools else None
        self._business = CallTools(runner, call) if runner is not None else None
        if self._business is not None:
            self._business.asks_confirmation = True
        main = [asyncio.create_task(c) for c in (self._link(), self._uplink(), self._events())]
        done = asyncio.create_task(self._done.wait())
        try:
            finished, _ = await asyncio.wait({*main, done}, return_when=asyncio.FIRST_COMPLETED)
            for t in finished:
                if t is not done:
                    t.result()  # a task that ends on its own failed: raise its error
        finally:
            for t in main:
                t.cancel()
            await asyncio.gather(*main, return_exceptions=True)
            if self._turn is not None:
                self._end_turn()
            rest: list[asyncio.Future[Any]] = [done, *self._tasks, *self._tools.values()]
            for f in rest:
                f.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            if runner is not None:
                await runner.aclose()
        if self._fell_back is not None and self.fallback is not None and self.cfg.fallback is not None:
            before = self.handover.messages if self.handover is not None else ()
            await fall_back(call, self.fallback, self.cfg.fallback, "gemini_live", self._fell_back,
                            [*before, *Handover.from_turns(self._records).messages])

    # -- caller side ------------------------------------------------------------------------------------
    async def _uplink(self) -> None:
        per = self.cfg.send_ms // FRAME_MS
        while True:
            fr = await self.call.listen()
            end = fr.t + FRAME_MS / 1000
            if fr.speech:
                self._speech_end = end
            self._batch.append(fr.pcm)
            self._batch_end = end
            if len(self._batch) >= per:
                self._flush_audio()
            if self._active and self._caller_quiet and end - self._speech_end >= self.cfg.turn_end_ms / 1000:
                self._activity(False)

    def _flush_audio(self) -> None:
        if self._batch:
            pcm = b"".join(self._batch)
            self.call.meter("gemini_live_in_s", len(pcm) / 2 / SAMPLE_RATE)
            data = base64.b64encode(pcm).decode()
            self._post({"realtimeInput": {"audio": {"data": data, "mimeType": INPUT_MIME}}}, audio_end=self._batch_end)
            self._batch = []

    async def _events(self) -> None:
        gateway = self.cfg.turn_owner == "gateway"
        while True:
            ev = await self.call.next_event()
            if isinstance(ev, BargeIn):
                self._interrupt("gateway")
                if gateway:
                    self._activity(True)
            elif isinstance(ev, CallerSpeech) and gateway:
                self._caller_quiet = not ev.started  # the turn ends in `_uplink` once the pause is long enough
                if ev.started and not self.call.speaking:  # over our audio, only a confirmed barge-in starts a turn
                    self._activity(True)
            elif isinstance(ev, Dtmf) and self._business is not None and self._business.key(ev.digit):
                continue  # the answer to a tool's confirmation prompt
            elif isinstance(ev, Dtmf):
                if self._turn is not None:
                    self._interrupt("dtmf")  # the session flushed our audio for the key
                self._send_request({"clientContent": {"turns": [_user_text(f"(The caller pressed key {ev.digit}.)")],
                                                      "turnComplete": True}}, "dtmf")
            elif isinstance(ev, TransferFailed):
                if self._transfer is not None and not self._transfer.done():
                    self._transfer.set_result(ev.code)
            elif isinstance(ev, HungUp):
                if self._transfer is not None and not self._transfer.done():
                    self._transfer.set_result(None)
                self._done.set()
                return

    def _activity(self, start: bool) -> None:
        if start == self._active:
            return
        self._active = start
        self._flush_audio()
        self._post({"realtimeInput": {"activityStart" if start else "activityEnd": {}}})
        if not start:
            self._owed_since = time.monotonic()

    def _send_request(self, msg: dict[str, Any], trigger: str, gen: int | None = None) -> None:
        """Send a message the model answers (a text turn or a tool response)."""
        self._flush_audio()
        self._post(msg, gen)
        now = time.monotonic()
        self._request = (trigger, now)
        self._owed_since = now

    def _post(self, msg: dict[str, Any], gen: int | None = None, audio_end: float | None = None) -> None:
        self._outbox.append((json.dumps(msg, separators=(",", ":")), gen, audio_end))
        self._wake.set()

    # -- connection -------------------------------------------------------------------------------------
    async def _link(self) -> None:
        failures = 0
        while True:
            try:
                ws = await self._open()
            except (OSError, TimeoutError, WebSocketException) as e:
                failures += 1
                _event("gemini_connect_failed", call=self.call.call_id, attempt=failures, error=_why(e))
                if self.fallback is not None and (refused(e) or failures > self.cfg.reconnect_attempts):
                    await self._give_up("connect refused" if refused(e) else f"{failures} failed connects in a row")
                    return
                self._start_apology(self.cfg.apology_after_s)
                await asyncio.sleep(min(MAX_BACKOFF_S, 0.25 * 2 ** (failures - 1)))
                continue
            failures = 0
            reason = await self._serve(ws)
            _event("gemini_disconnected", call=self.call.call_id, reason=reason, handle=self.handle)
            self._lost(reason)

    def _url(self) -> str:
        key = os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        if not key:
            return self.cfg.url
        sep = "&" if "?" in self.cfg.url else "?"
        return f"{self.cfg.url}{sep}key={urllib.parse.quote(key)}"

    async def _open(self) -> ClientConnection:
        async with asyncio.timeout(self.cfg.connect_timeout_s):
            ws = await connect(self._url(), compression=None, open_timeout=None, close_timeout=1.0, max_size=None)
            try:
                await ws.send(json.dumps(self._setup()))
                while True:
                    msg = _parse(await ws.recv())
                    if msg is not None and "setupComplete" in msg:
                        return ws
                    if msg is not None:
                        _event("gemini_bad_message", call=self.call.call_id, error="server sent "
                               f"{sorted(msg)} before setupComplete")
            except BaseException:
                ws.transport.abort()
                raise

    def _setup(self) -> dict[str, Any]:
        c = self.cfg
        if c.turn_owner == "gateway":
            rt: dict[str, Any] = {"automaticActivityDetection": {"disabled": True},
                                  "turnCoverage": "TURN_INCLUDES_ALL_INPUT"}
        else:
            rt = {"automaticActivityDetection": {"disabled": False}, "activityHandling": "START_OF_ACTIVITY_INTERRUPTS"}
        return {"setup": {
            "model": c.model,
            "generationConfig": {"responseModalities": ["AUDIO"],
                                 "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": c.voice}}}},
            "systemInstruction": {"parts": [{"text": c.instructions}]},
            "tools": [{"functionDeclarations": [*TOOLS, *(self._business.runner.gemini_declarations()
                                                           if self._business is not None else [])]}],
            "realtimeInputConfig": rt,
            "sessionResumption": {"handle": self.handle} if self.handle else {},
            "contextWindowCompression": {"slidingWindow": {}},
            "inputAudioTranscription": {},
            "outputAudioTranscription": {},
        }}

    async def _serve(self, ws: ClientConnection) -> str:
        """Use a set-up connection until it ends; returns why."""
        self._gen += 1
        self.connections += 1
        now = time.monotonic()
        outage_ms = round((now - self._down_since) * 1000, 1) if self._down_since is not None else 0.0
        _event("gemini_connected", call=self.call.call_id, connection=self.connections, resumed_with=self.handle,
               ready_ms=outage_ms)
        self._ws, self._down_since, self._last_rx = ws, None, now
        if self._apology is not None:
            self._apology.cancel()  # a pending apology is not needed any more; one already said goes on
            self._apology = None
        self._said = None
        if not self._greeted and self.handover is not None:
            self._send_request({"clientContent": {"turns": handover_turns(self.handover), "turnComplete": True}},
                               "handover")
        elif not self._greeted and self.cfg.greeting:
            self._send_request({"clientContent": {"turns": [_user_text(self.cfg.greeting)], "turnComplete": True}},
                               "greeting")
        self._greeted = True
        if self._cut:
            self._cut = False
            self._send_request({"clientContent": {"turns": [_user_text(RESUME_TEXT)], "turnComplete": True}}, "resume")
        sender = asyncio.create_task(self._sender(ws, self._gen))
        receiver = asyncio.create_task(self._receive(ws))
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver.done():
                return receiver.result()
            err = sender.exception()
            return f"send failed: {_why(err)}" if err is not None else "sender ended"
        finally:
            for t in (sender, receiver):
                t.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            self._ws = None
            self._keep(asyncio.ensure_future(ws.close()))

    async def _sender(self, ws: ClientConnection, gen: int) -> None:
        while True:
            while self._outbox:
                text, only_on, audio_end = self._outbox[0]
                if only_on is None or only_on == gen:
                    await ws.send(text)  # on failure the message stays queued for the next connection
                    if audio_end is not None:
                        self._lag_ms = max(self._lag_ms, (time.monotonic() - audio_end) * 1000)
                self._outbox.popleft()
            self._wake.clear()
            await self._wake.wait()

    async def _receive(self, ws: ClientConnection) -> str:
        leave_by: float | None = None
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns a message that arrives as the task
                # is cancelled and drops the cancellation, and this loop would then poll on forever
                async with asyncio.timeout(POLL_S):
                    raw = await ws.recv()
            except TimeoutError:
                raw = None
            except ConnectionClosed as e:
                return f"closed ({e.rcvd.code} {e.rcvd.reason})" if e.rcvd is not None else "dropped"
            now = time.monotonic()
            if raw is not None:
                self._last_rx = now
                msg = _parse(raw)
                if msg is not None:
                    self._dispatch(msg)
                    if "goAway" in msg and leave_by is None:
                        leave_by = now + self._time_left(msg["goAway"])
            if leave_by is not None and ((self._turn is None and self._owed_since is None) or now >= leave_by):
                return "go_away"
            if self._stalled(now):
                return "stalled"

    def _time_left(self, go_away: object) -> float:
        try:
            left = _seconds(go_away.get("timeLeft", 0) if isinstance(go_away, dict) else 0)
        except ValueError as e:
            _event("gemini_bad_message", call=self.call.call_id, error=str(e))
            left = 0.0
        _event("gemini_go_away", call=self.call.call_id, time_left_s=left, turn_in_flight=self._turn is not None)
        return max(0.0, left - 0.5)

    def _stalled(self, now: float) -> bool:
        turn = self._turn
        generating = turn is not None and not turn.generated and not turn.dropped_by
        if self._tools or not (generating or self._owed_since is not None):
            return False
        return now - max(self._last_rx, self._owed_since or 0.0) > self.cfg.response_timeout_s

    def _lost(self, reason: str) -> None:
        self._down_since = time.monotonic()
        turn = self._turn
        self._cut = self._owed_since is not None  # a reply owed, or one being generated, was lost
        if turn is not None:
            self._cut = self._cut or not (turn.generated or turn.dropped_by)
            self._end_turn(cut=self._cut)
        self._owed_since = None
        start = json.dumps({"realtimeInput": {"activityStart": {}}}, separators=(",", ":"))
        if self._active and all(text != start for text, _, _ in self._outbox):
            self._outbox.appendleft((start, None, None))  # the caller is mid-turn: the next connection must know
        if reason != "go_away":
            self._start_apology(0.0 if reason == "stalled" else self.cfg.apology_after_s)

    async def _give_up(self, why: str) -> None:
        """The server is dead: say the apology now (unless this outage had it), then let the fallback take over."""
        if self._said is None:
            if self._apology is not None:
                self._apology.cancel()
            self._say_apology()
        _event("gemini_give_up", call=self.call.call_id, reason=why, fallback=self.cfg.fallback)
        assert self._said is not None
        await asyncio.gather(self._said, return_exceptions=True)
        self._fell_back = why

    def _say_apology(self) -> None:
        assert self._down_since is not None
        outage_ms = round((time.monotonic() - self._down_since) * 1000, 1)
        _event("gemini_apology", call=self.call.call_id, outage_ms=outage_ms)
        self._said = asyncio.ensure_future(self.call.say(self.cfg.apology))
        self._keep(self._said)

    def _start_apology(self, delay: float) -> None:
        if self._apology is None:
            self._apology = asyncio.create_task(self._apologise(delay))
            self._keep(self._apology)

    async def _apologise(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._ws is None and self._down_since is not None:
            self._say_apology()

    def _keep(self, fut: asyncio.Future[Any]) -> None:
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    # -- server messages --------------------------------------------------------------------------------
    def _dispatch(self, msg: dict[str, Any]) -> None:
        try:
            if "serverContent" in msg:
                self._content(msg["serverContent"])
            elif "toolCall" in msg:
                self._owed_since = None
                self._tool_call(msg["toolCall"])
            elif "toolCallCancellation" in msg:
                for cid in msg["toolCallCancellation"].get("ids") or []:
                    task = self._tools.pop(str(cid), None)
                    if task is not None:
                        task.cancel()
                        self._keep(asyncio.ensure_future(self._report_kept(task)))
                        _event("gemini_tool_cancelled", call=self.call.call_id, id=cid)
            elif "sessionResumptionUpdate" in msg:
                upd = msg["sessionResumptionUpdate"]
                if upd.get("resumable") and upd.get("newHandle"):
                    self.handle = str(upd["newHandle"])
            elif not {"goAway", "setupComplete", "usageMetadata"} & msg.keys():
                _event("gemini_bad_message", call=self.call.call_id, error=f"unknown server message {sorted(msg)}")
        except (AttributeError, KeyError, TypeError, ValueError) as e:  # binascii.Error is a ValueError
            _event("gemini_bad_message", call=self.call.call_id, error=f"{type(e).__name__}: {e}",
                   sample=json.dumps(msg)[:120])

    def _content(self, sc: dict[str, Any]) -> None:
        if sc.keys() - {"inputTranscription"}:
            self._owed_since = None  # the model answers
        if sc.get("interrupted"):
            self._interrupt("server")
        for part in (sc.get("modelTurn") or {}).get("parts") or []:
            blob = part.get("inlineData")
            if blob is not None:
                self._audio(blob)
        if sc.get("outputTranscription"):
            self._current().text += str(sc["outputTranscription"].get("text", ""))
        if sc.get("inputTranscription"):
            self._heard += str(sc["inputTranscription"].get("text", ""))
        if sc.get("generationComplete") and self._turn is not None:
            self._finish_audio(self._turn)
            self._turn.generated = True
        if sc.get("turnComplete") and self._turn is not None:
            self._end_turn()

    def _current(self) -> _Turn:
        if self._turn is None:
            req = self._request
            if req is not None and req[1] >= self._speech_end:
                self._turn = _Turn(req[0], req[1])
            else:
                self._turn = _Turn("speech", self._speech_end)
            self._request = None
        return self._turn

    def _audio(self, blob: dict[str, Any]) -> None:
        turn = self._current()
        rate = _pcm_rate(str(blob.get("mimeType", "")))
        data = base64.b64decode(blob["data"], validate=True)
        now = time.monotonic()
        if turn.first_rx is None:
            turn.first_rx = now
        turn.rx_ms += len(data) / 2 / rate * 1000
        self.call.meter("gemini_live_out_s", len(data) / 2 / rate)
        if turn.dropped_by:
            return
        if turn.resampler is None or turn.rate != rate:
            self._finish_audio(turn)
            turn.resampler, turn.rate = PolyphaseResampler(rate, SAMPLE_RATE), rate
        pcm = turn.rest + turn.resampler.process(data[: len(data) // 2 * 2])
        whole = len(pcm) - len(pcm) % FRAME_BYTES
        turn.rest = pcm[whole:]
        if whole:
            self._play(turn, pcm[:whole])

    def _finish_audio(self, turn: _Turn) -> None:
        """Play what the turn's resampler still holds (its audio is complete for now)."""
        if turn.resampler is not None:
            pcm = turn.rest + turn.resampler.process(bytes(2 * turn.resampler.taps))  # the filter's last samples
            turn.resampler, turn.rest = None, b""
            if pcm and not turn.dropped_by:
                self._play(turn, pcm)

    def _play(self, turn: _Turn, pcm: bytes) -> None:
        self._last_played = asyncio.ensure_future(self.call.enqueue(pcm, SAMPLE_RATE))
        if turn.first_enq is None:
            turn.first_enq = time.monotonic()

    def _interrupt(self, by: str) -> None:
        """The caller talked over the model (`by` the gateway, whose playout is already flushed, or the server)."""
        turn = self._turn
        if turn is not None and turn.dropped_by:
            return  # the other side already stopped this turn
        if by == "server" and self.call.speaking:
            self.call.flush_playout()
        if turn is not None:
            turn.dropped_by, turn.resampler, turn.rest = by, None, b""
        _event("gemini_interrupted", call=self.call.call_id, by=by, turn_open=turn is not None)

    def _end_turn(self, cut: bool = False) -> None:
        turn = self._turn
        assert turn is not None
        self._turn = None
        self._finish_audio(turn)

        def ms(t: float | None) -> float | None:
            return None if t is None or not turn.since else round((t - turn.since) * 1000, 1)

        rx, enq = turn.first_rx, turn.first_enq
        gap = None if rx is None or enq is None else round((enq - rx) * 1000, 1)
        self._records.append(record := {
            "backend": "gemini_live", "trigger": turn.trigger, "text": turn.text[:300], "heard": self._heard[:300],
            "first_audio_rx_ms": ms(turn.first_rx), "first_audio_ms": ms(turn.first_enq), "overhead_ms": gap,
            "uplink_lag_ms": round(self._lag_ms, 1), "audio_ms": round(turn.rx_ms),
            "interrupted_by": turn.dropped_by or None, "cut": cut, "connection": self.connections,
        })
        self.call.record_turn(record)
        self._heard, self._lag_ms = "", 0.0

    # -- tools ------------------------------------------------------------------------------------------
    def _tool_call(self, tc: dict[str, Any]) -> None:
        if self._turn is not None:
            self._finish_audio(self._turn)  # what the model said before acting plays out first
        for fc in tc.get("functionCalls") or []:
            cid, name, args = str(fc.get("id", "")), str(fc.get("name", "")), fc.get("args") or {}
            task = asyncio.create_task(self._run_tool(self._gen, cid, name, args if isinstance(args, dict) else {}))
            self._tools[cid] = task
            task.add_done_callback(functools.partial(self._forget_tool, cid))

    def _forget_tool(self, cid: str, task: asyncio.Task[None]) -> None:
        if self._tools.get(cid) is task:
            self._tools.pop(cid)

    async def _run_tool(self, gen: int, cid: str, name: str, args: dict[str, Any]) -> None:
        _event("gemini_tool_call", call=self.call.call_id, id=cid, name=name, args=redact_fields(args))
        if self._business is not None and name in self._business.runner.tools:
            result: dict[str, Any] | None = await self._run_business(self._business, name, args, cid)
        else:
            result = await self._act(name, args)
        if result is not None:
            _event("gemini_tool_result", call=self.call.call_id, id=cid, name=name, result=redact_fields(result))
            self._send_request({"toolResponse": {"functionResponses": [{"id": cid, "name": name, "response": result}]}},
                               "tool", gen)

    async def _run_business(self, tools: CallTools, name: str, args: dict[str, Any], cid: str) -> dict[str, Any]:
        """A business tool (agents.tools), once what the model said first has played; a failure gets the tool's
        apology in the gateway's voice, and the model is told it was given."""
        await self._drain()
        result = await tools.run(name, args, call_id=cid)
        if result.ok:
            return result.for_model()
        await self.call.say(tools.runner.tools[name].apology)
        return {**result.for_model(), "note": "the caller was already told it failed; do not apologise again"}

    async def _report_kept(self, cancelled: asyncio.Task[None]) -> None:
        """After a `toolCallCancellation`: a call that cannot be taken back (not idempotent, its request already
        made) went on (agents.tools); the model learns its result as context, a user turn that does not end the
        caller's turn (`turnComplete: false`), since the cancelled id takes no `toolResponse` and nothing can undo
        it. A call not yet made, or an idempotent one, is simply dropped."""
        await asyncio.gather(cancelled, return_exceptions=True)
        if self._business is None:
            return
        for cid, args, result in await self._business.settle():
            output = json.dumps(result.for_model(), ensure_ascii=False)
            _event("gemini_tool_kept", call=self.call.call_id, id=cid, name=result.name, ok=result.ok)
            text = (f"(The call {result.name}({json.dumps(args, ensure_ascii=False)}) was cancelled when the caller "
                    f"interrupted, but it had already been made and cannot be undone. Its result: {output})")
            self._post({"clientContent": {"turns": [_user_text(text)], "turnComplete": False}})

    async def _act(self, name: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """Do one tool call; the response for the model, or None when the call is over."""
        if name == "end_call":
            await self._drain()
            await self.call.hangup("agent")
            self._done.set()
            return None
        if name == "transfer_call":
            target = str(args.get("target") or self.cfg.transfer_target or "")
            if not _SIP_URI.fullmatch(target):
                return {"error": f"no valid transfer target (got {target!r}); ask for a SIP URI"}
            try:
                headers = transfer_headers(args.get("headers"))
            except HeaderError as e:
                return {"error": str(e)}
            await self._drain()
            self._transfer = asyncio.get_running_loop().create_future()
            await self.call.transfer(uri_with_headers(target, headers))
            try:
                async with asyncio.timeout(TRANSFER_TIMEOUT_S):  # not wait_for: see _receive
                    code = await self._transfer
            except TimeoutError:
                return {"error": "the transfer got no answer; tell the caller"}
            finally:
                self._transfer = None
            return None if code is None else {"error": f"the transfer was refused (SIP {code}); tell the caller"}
        if name == "send_dtmf":
            digits = str(args.get("digits", ""))
            if not _DTMF.fullmatch(digits):
                return {"error": f"bad digits {digits!r}: use 0-9, *, #, A-D"}
            await self.call.send_dtmf(digits)
            return {"result": f"sent {digits}"}
        if name in RECORDING_TOOLS:
            if not self.call.pause_recording(name == "pause_recording"):
                return {"error": "the call is not recorded"}
            return {"result": "recording paused" if name == "pause_recording" else "recording resumed"}
        return {"error": f"unknown function {name!r}"}

    async def _drain(self) -> None:
        """Wait until the audio queued so far has played (or was cut)."""
        if self._last_played is not None:
            await asyncio.wait({self._last_played})


def _user_text(text: str) -> dict[str, Any]:
    return {"role": "user", "parts": [{"text": text}]}


def handover_turns(h: Handover) -> list[dict[str, Any]]:
    """`clientContent` turns for a call taken over: the note (a user turn in brackets), then the conversation, with
    the earlier backend's tool calls and results as a bracketed user turn before the caller's last one (a
    `functionResponse` answers only a `toolCall` of this session)."""
    turns = [_user_text(f"({h.note})")] if h.note else []
    said = [{"role": "model" if role == "assistant" else "user", "parts": [{"text": text}]}
            for role, text in h.messages]
    calls = [_user_text(f"(Already done before you took over, do not repeat it: {t.name}({t.arguments}) returned "
                        f"{t.output})") for t in h.tools]
    cut = len(said) - 1 if said and h.messages[-1][0] == "user" else len(said)
    return turns + said[:cut] + calls + said[cut:]


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class GeminiLiveFactory(AgentFactory):
    def __init__(self, name: str, cfg: GeminiLiveConfig, prompts: PromptCache,
                 tools: Mapping[str, ToolConfig] | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.prompts = prompts
        self.tools = {n: t for n, t in (tools or {}).items() if n in cfg.tools}
        self.fallback: TakesOver | None = None
        """The cascade named by `cfg.fallback`, set by agents.registry.link_fallbacks."""

    async def prepare(self) -> None:
        env = self.cfg.api_key_env
        if env and not os.environ.get(env):
            raise ValueError(f"agent {self.name!r}: environment variable {env} (the Gemini API key) is not set")
        await self.prompts.prepare(self.cfg.apology)  # rendered now, so an outage is answered within a second
        for tool in self.tools.values():
            for text in (tool.filler, tool.apology):
                await self.prompts.prepare(text)

    def create(self, handover: Handover | None = None) -> Agent:
        if self.cfg.fallback is not None and self.fallback is None:
            raise RuntimeError(f"agent {self.name!r}: its fallback {self.cfg.fallback!r} was not linked "
                               "(agents.registry.link_fallbacks)")
        return GeminiLiveAgent(self, handover)
