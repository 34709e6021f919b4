"""Asterisk AudioSocket framing, sans-IO: bytes in -> frames; frames out -> bytes.

A frame is a type byte, a 2-byte big-endian payload length and the payload: 0x00 hang up, 0x01 the call's UUID
(16 bytes), 0x03 one DTMF digit (ASCII), 0x10 signed linear 16-bit little-endian mono at 8 kHz, 0x12 the same at
16 kHz, 0xff an error (optional code). Asterisk also defines other slin rates; voicegate refuses them by name.
Nothing on PyPI parses this protocol as a library, and the framing is a few lines, so it is written here.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

HANGUP, UUID, DTMF, SLIN8, SLIN16, ERROR = 0x00, 0x01, 0x03, 0x10, 0x12, 0xFF
RATES = {SLIN8: 8000, SLIN16: 16000}
MAX_AUDIO_MS = 200
"""Longest audio payload one frame may carry (Asterisk sends 20 ms)."""
DIGITS = frozenset(b"0123456789*#ABCD")


class ProtocolError(Exception):
    """The peer broke the AudioSocket protocol; the message names the frame and what is wrong."""


@dataclass(frozen=True)
class Hangup:
    pass


@dataclass(frozen=True)
class CallId:
    uuid: str


@dataclass(frozen=True)
class Digit:
    digit: str


@dataclass(frozen=True)
class Audio:
    kind: int
    pcm: bytes


@dataclass(frozen=True)
class PeerError:
    code: int | None


Frame = Hangup | CallId | Digit | Audio | PeerError


def _check_length(kind: int, n: int) -> None:
    """Refuse a bad length from the header alone, before waiting for a payload that may never come."""
    if kind == UUID and n != 16:
        raise ProtocolError(f"UUID frame (0x01) of {n} bytes; a UUID is 16")
    if kind == DTMF and n != 1:
        raise ProtocolError(f"DTMF frame (0x03) of {n} bytes; it carries one digit")
    if kind in RATES:
        most = RATES[kind] * MAX_AUDIO_MS // 1000 * 2
        if n == 0 or n % 2 or n > most:
            raise ProtocolError(f"audio frame ({kind:#04x}) of {n} bytes; expected an even 2-{most} (16-bit samples, "
                                f"at most {MAX_AUDIO_MS} ms)")
    elif 0x11 <= kind <= 0x18:
        raise ProtocolError(f"audio kind {kind:#04x} is not supported; voicegate takes 0x10 (slin 8 kHz) and 0x12 "
                            f"(slin 16 kHz)")
    elif kind not in (HANGUP, UUID, DTMF, ERROR):
        raise ProtocolError(f"unknown frame type {kind:#04x}")


def _frame(kind: int, payload: bytes) -> Frame:
    if kind == HANGUP:
        return Hangup()
    if kind == UUID:
        return CallId(str(uuid.UUID(bytes=payload)))
    if kind == DTMF:
        if payload[0] not in DIGITS:
            raise ProtocolError(f"DTMF frame (0x03) with {payload!r}; expected one of 0-9 * # A-D")
        return Digit(chr(payload[0]))
    if kind == ERROR:
        return PeerError(payload[0] if payload else None)
    return Audio(kind, payload)


class Parser:
    """Feed it bytes as they arrive; it yields the whole frames among them and keeps a partial one."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        """The whole frames so far, one at a time: a bad frame raises only after the good ones before it."""
        self._buf += data
        while len(self._buf) >= 3:
            kind, n = struct.unpack_from(">BH", self._buf)
            _check_length(kind, n)
            if len(self._buf) < 3 + n:
                break
            payload = bytes(self._buf[3 : 3 + n])
            del self._buf[: 3 + n]
            yield _frame(kind, payload)

    @property
    def partial(self) -> int:
        """Bytes of an unfinished frame (a close now cuts a frame)."""
        return len(self._buf)


def encode(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BH", kind, len(payload)) + payload
