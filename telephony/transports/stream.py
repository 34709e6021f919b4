"""One non-SIP call's media, sans-IO: wire audio in -> 16 kHz frames into `CallMedia`; a 20 ms tick -> wire audio
out; media events -> the control messages a streaming peer needs (`clear` when agent audio is dropped, a mark after
each finished utterance).

SIP calls get codecs, resampling and a media clock from pjmedia; a stream transport (Twilio-style WebSocket,
Asterisk AudioSocket) carries raw audio, so this module does it: G.711 with `media.g711`, rate changes with the
stateful low-delay `media.polyphase` filter in both directions (never chunk by chunk without state), and pacing at
one frame per tick so that the peer holds at most a frame or two of our audio when the caller barges in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from media.events import BargeInConfirmed, BargeInPaused, MediaEvent, PlayoutFinished, PlayoutFlushed
from media.frames import FRAME_BYTES, FRAME_MS, SAMPLE_RATE
from media.g711 import ulaw_decode, ulaw_encode
from media.pipeline import CallMedia
from media.polyphase import PolyphaseResampler

TICK_S = FRAME_MS / 1000
MAX_CATCH_UP = 5
"""A clock that woke this many ticks late skips ahead instead of bursting out the backlog."""


@dataclass(frozen=True)
class SendAudio:
    payload: bytes
    """Wire-format audio (one 20 ms frame)."""


@dataclass(frozen=True)
class SendClear:
    """Drop the agent audio the peer has buffered but not played."""


@dataclass(frozen=True)
class SendMark:
    name: str
    """Sent after an utterance's last frame; the peer returns it once that audio has played."""


Out = SendAudio | SendClear | SendMark


class WireAudio:
    """Converts one peer's audio format (`mulaw` or `slin` PCM16 at `rate`) to 16 kHz PCM16 and back, with state."""

    def __init__(self, encoding: Literal["mulaw", "slin"], rate: int) -> None:
        self.encoding = encoding
        self.rate = rate
        self._up = None if rate == SAMPLE_RATE else PolyphaseResampler(rate, SAMPLE_RATE)
        self._down = None if rate == SAMPLE_RATE else PolyphaseResampler(SAMPLE_RATE, rate)

    @property
    def label(self) -> str:
        """The codec name for the call record (as SIP names them)."""
        return f"{'PCMU' if self.encoding == 'mulaw' else 'L16'}/{self.rate}"

    def decode(self, payload: bytes) -> bytes:
        pcm = ulaw_decode(payload) if self.encoding == "mulaw" else payload
        return self._up.process(pcm) if self._up is not None else pcm

    def encode(self, pcm16k: bytes) -> bytes:
        pcm = self._down.process(pcm16k) if self._down is not None else pcm16k
        return ulaw_encode(pcm) if self.encoding == "mulaw" else pcm


class StreamCall:
    """The media side of one stream-transport call. `observe` must be the call's media-event observer (see
    `Gateway.open_leg`); `on_audio` and `tick` return what to send, in order."""

    def __init__(self, media: CallMedia, wire: WireAudio | None = None) -> None:
        self.media = media
        self.wire = wire
        self._pcm = bytearray()
        self._controls: list[Out] = []
        self._marks: list[Out] = []
        self._unheard = False
        """Audio went out since the last clear: a clear has something to drop."""

    def observe(self, ev: MediaEvent) -> None:
        if isinstance(ev, BargeInPaused | BargeInConfirmed | PlayoutFlushed):
            if self._unheard:
                self._controls.append(SendClear())
                self._unheard = False
        elif isinstance(ev, PlayoutFinished):
            self._marks.append(SendMark(f"item-{ev.item}"))

    def on_audio(self, now: float, payload: bytes) -> list[Out]:
        """Wire audio from the peer: whole 16 kHz frames go to the media pipeline (a partial one waits)."""
        assert self.wire is not None, "the wire format is set before audio arrives"
        self._pcm += self.wire.decode(payload)
        while len(self._pcm) >= FRAME_BYTES:
            frame = bytes(self._pcm[:FRAME_BYTES])
            del self._pcm[:FRAME_BYTES]
            self.media.on_inbound(now, frame)
        return self._take([])

    def tick(self, now: float) -> list[Out]:
        """One 20 ms media clock tick: this tick's agent audio, if any, and the controls caused since the last one
        (an agent's own flush happens between ticks)."""
        if self.wire is None:
            return []  # the peer's format is not known yet: the agent's first words wait for it
        audio = self.media.next_audio(now)
        if audio is None:
            return self._take([])
        self._unheard = True
        return self._take([SendAudio(self.wire.encode(audio))])

    def _take(self, audio: list[Out]) -> list[Out]:
        out = self._controls + audio + self._marks
        self._controls, self._marks = [], []
        return out


async def run_clock(call: StreamCall, send: Callable[[list[Out]], Awaitable[None]]) -> None:
    """Tick `call` every 20 ms on the loop's clock (absolute deadlines, so the rate does not drift) and send what
    each tick gives; returns when `send` raises (the connection is gone) or the task is cancelled."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        due += TICK_S
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif -delay > MAX_CATCH_UP * TICK_S:
            due = loop.time()
        out = call.tick(time.monotonic())
        if out:
            await send(out)
