"""Twilio Media Streams messages, sans-IO: parse what the provider sends, build what we send back.

In: `connected`, `start` (streamSid, callSid, mediaFormat, customParameters), `media` (base64 µ-law 8 kHz),
`dtmf`, `mark` (a mark we sent, returned once the audio before it has played), `stop`. Out: `media`, `mark`,
`clear`, each with the `streamSid`. Messages are JSON text frames; the framing and JSON are the websockets and json
libraries' work, the rules of the message flow (start before media, one stream per connection) are this module's.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from telephony.transports.stream import Out, SendAudio, SendClear, SendMark

MAX_PAYLOAD = 1600
"""Largest µ-law payload one `media` message may carry: 200 ms (Twilio sends 20 ms, 160 bytes)."""
DIGITS = frozenset("0123456789*#ABCD")


class ProtocolError(Exception):
    """The provider broke the Media Streams protocol; the message says what and where."""


@dataclass(frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True)
class Start:
    stream_sid: str
    call_sid: str
    custom: dict[str, str] = field(default_factory=dict)
    tracks: tuple[str, ...] = ("inbound",)


@dataclass(frozen=True)
class Media:
    payload: bytes
    track: str = "inbound"


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Unknown:
    """An event this server does not know (the protocol grows): ignored, logged once per name."""

    event: str


Inbound = Connected | Start | Media | Dtmf | Mark | Stop | Unknown


def _obj(msg: dict[str, Any], key: str, event: str) -> dict[str, Any]:
    v = msg.get(key)
    if not isinstance(v, dict):
        raise ProtocolError(f"{event} message without a {key!r} object")
    return v


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v:
        raise ProtocolError(f"{where}.{key} must be a non-empty string, got {v!r:.40}")
    return v


def _start(msg: dict[str, Any]) -> Start:
    s = _obj(msg, "start", "start")
    fmt = s.get("mediaFormat")
    if not isinstance(fmt, dict):
        raise ProtocolError("start.mediaFormat is missing")
    got = (fmt.get("encoding"), fmt.get("sampleRate"), fmt.get("channels"))
    if got != ("audio/x-mulaw", 8000, 1):
        raise ProtocolError(f"start.mediaFormat {got} is not supported; voicegate takes ('audio/x-mulaw', 8000, 1)")
    custom = s.get("customParameters") or {}
    if not isinstance(custom, dict):
        raise ProtocolError("start.customParameters must be an object")
    tracks = s.get("tracks") or ["inbound"]
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise ProtocolError("start.tracks must be a list of strings")
    sid = _str(s, "streamSid", "start")
    return Start(sid, str(s.get("callSid") or sid), {str(k): str(v) for k, v in custom.items()}, tuple(tracks))


def _media(msg: dict[str, Any]) -> Media:
    m = _obj(msg, "media", "media")
    raw = m.get("payload")
    if not isinstance(raw, str):
        raise ProtocolError("media.payload must be a base64 string")
    try:
        payload = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"media.payload is not valid base64 ({len(raw)} characters)") from None
    if not 0 < len(payload) <= MAX_PAYLOAD:
        raise ProtocolError(f"media.payload holds {len(payload)} bytes; expected 1-{MAX_PAYLOAD} (µ-law, 8 kHz)")
    return Media(payload, str(m.get("track") or "inbound"))


def parse(data: str | bytes) -> Inbound:
    """One message from the provider; raises ProtocolError for anything that is not a well-formed message."""
    if isinstance(data, bytes):
        raise ProtocolError(f"binary frame of {len(data)} bytes; Media Streams messages are JSON text")
    try:
        msg = json.loads(data)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
        raise ProtocolError(f"not a Media Streams message (no event name): {data[:60]!r}")
    ev = msg["event"]
    if ev == "connected":
        return Connected(str(msg.get("protocol", "")), str(msg.get("version", "")))
    if ev == "start":
        return _start(msg)
    if ev == "media":
        return _media(msg)
    if ev == "dtmf":
        digit = _obj(msg, "dtmf", "dtmf").get("digit")
        if not isinstance(digit, str) or digit not in DIGITS:
            raise ProtocolError(f"dtmf.digit {digit!r:.20} is not one of 0-9 * # A-D")
        return Dtmf(digit)
    if ev == "mark":
        return Mark(_str(_obj(msg, "mark", "mark"), "name", "mark"))
    if ev == "stop":
        return Stop()
    return Unknown(ev[:40])


class StreamState:
    """The rules of one connection's message flow: `start` once, before any `media`, `dtmf` or `mark`."""

    def __init__(self) -> None:
        self.start: Start | None = None

    def receive(self, data: str | bytes) -> Inbound:
        msg = parse(data)
        if isinstance(msg, Start):
            if self.start is not None:
                raise ProtocolError(f"a second start (stream {msg.stream_sid}) on one connection")
            self.start = msg
        elif isinstance(msg, Media | Dtmf | Mark) and self.start is None:
            raise ProtocolError(f"{type(msg).__name__.lower()} before start")
        return msg


def encode(out: Out, stream_sid: str) -> str:
    """A message to the provider."""
    if isinstance(out, SendAudio):
        body: dict[str, Any] = {"event": "media", "streamSid": stream_sid,
                                "media": {"payload": base64.b64encode(out.payload).decode()}}
    elif isinstance(out, SendMark):
        body = {"event": "mark", "streamSid": stream_sid, "mark": {"name": out.name}}
    else:
        assert isinstance(out, SendClear)
        body = {"event": "clear", "streamSid": stream_sid}
    return json.dumps(body, separators=(",", ":"))
