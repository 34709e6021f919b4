"""Stream-transport peers for the tests and the bench: a Twilio Media Streams provider and an Asterisk AudioSocket
channel, each streaming caller audio in real time (one 20 ms frame per tick) and keeping a timeline of what it hears.

The Twilio peer plays our audio as Twilio does: it buffers `media`, plays it at real time, returns each `mark` once
the audio before it has played, and on `clear` drops what it has not played and returns the pending marks at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from media.g711 import ulaw_decode, ulaw_encode
from media.resample import resample
from tests.audio import to_array, to_pcm

RATE = 8000
CHUNK = 160  # 20 ms at 8 kHz


@dataclass
class Heard:
    """What a peer sent and heard on one timeline (16 kHz, from the stream's start), and when things arrived."""

    sent: np.ndarray
    heard: np.ndarray
    speak_start_frame: int
    clears_s: list[float] = field(default_factory=list)
    marks_sent: list[str] = field(default_factory=list)
    marks_returned: list[str] = field(default_factory=list)
    first_audio_s: float | None = None
    media_msgs: int = 0
    close_code: int | None = None
    hung_up_s: float | None = None


def _to_8k(x16: np.ndarray) -> bytes:
    return resample(to_pcm(x16), 16000, RATE)


def _to_16k(pcm8: bytes) -> np.ndarray:
    return to_array(resample(pcm8, RATE, 16000))


class _Timeline:
    """The peer's playback: audio queued at real time from the first moment it could play; `clear` drops the rest."""

    def __init__(self, seconds: float) -> None:
        self.pcm = np.zeros(int(seconds * RATE) + RATE, dtype=np.int16)
        self.t0 = time.monotonic()
        self.cursor = 0

    def now_pos(self) -> int:
        return int((time.monotonic() - self.t0) * RATE)

    def play(self, pcm8: bytes) -> None:
        x = np.frombuffer(pcm8, dtype="<i2")
        pos = max(self.cursor, self.now_pos())
        end = min(pos + len(x), len(self.pcm))
        self.pcm[pos:end] = x[: end - pos]
        self.cursor = pos + len(x)

    def played_at(self) -> float:
        """Seconds from now until everything queued has played."""
        return max(0.0, (self.cursor - self.now_pos()) / RATE)

    def clear(self) -> None:
        pos = self.now_pos()
        self.pcm[pos:] = 0
        self.cursor = pos


async def twilio_call(url: str, caller: np.ndarray, seconds: float, to: str = "", *, speak_at_s: float = 0.0,
                      speak_after_agent_ms: float | None = None, dtmf: tuple[tuple[float, str], ...] = (),
                      headers: dict[str, str] | None = None, stop: bool = True) -> Heard:
    """Stream `caller` (16 kHz) as a Twilio provider for `seconds`, starting at `speak_at_s` or that long after the
    agent's first audio; µ-law silence around it."""
    speech = ulaw_encode(_to_8k(caller))
    silence = ulaw_encode(bytes(CHUNK * 2))
    sid, call_sid = f"MZ{uuidlib.uuid4().hex}", f"CA{uuidlib.uuid4().hex}"
    tl = _Timeline(seconds)
    sent = np.zeros(int(seconds * RATE) + RATE, dtype=np.int16)
    res = Heard(np.zeros(0), np.zeros(0), -1)
    pending: dict[str, asyncio.TimerHandle] = {}
    seq = [0]

    def msg(event: str, **body: Any) -> str:
        seq[0] += 1
        return json.dumps({"event": event, "sequenceNumber": str(seq[0]), "streamSid": sid, **body})

    async with connect(url, additional_headers=headers or {}, max_size=None) as ws:
        loop = asyncio.get_running_loop()

        async def return_mark(name: str) -> None:
            pending.pop(name, None)
            res.marks_returned.append(name)
            with contextlib.suppress(ConnectionClosed):
                await ws.send(msg("mark", mark={"name": name}))

        async def receive(ws: ClientConnection) -> None:
            try:
                async for raw in ws:
                    m = json.loads(raw)
                    assert m.get("streamSid") == sid, m
                    if m["event"] == "media":
                        res.media_msgs += 1
                        if res.first_audio_s is None:
                            res.first_audio_s = time.monotonic() - tl.t0
                        tl.play(ulaw_decode(base64.b64decode(m["media"]["payload"])))
                    elif m["event"] == "mark":
                        name = m["mark"]["name"]
                        res.marks_sent.append(name)
                        pending[name] = loop.call_later(tl.played_at(),
                                                        lambda n=name: asyncio.ensure_future(return_mark(n)))
                    elif m["event"] == "clear":
                        res.clears_s.append(time.monotonic() - tl.t0)
                        tl.clear()
                        for name, h in list(pending.items()):
                            h.cancel()
                            await return_mark(name)
            except ConnectionClosed:
                pass
            res.hung_up_s = time.monotonic() - tl.t0

        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(msg("start", start={
            "streamSid": sid, "accountSid": "AC" + "0" * 32, "callSid": call_sid, "tracks": ["inbound"],
            "customParameters": {"to": to, "from": "+15550100"} if to else {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}))
        rx = asyncio.create_task(receive(ws))
        keys = list(dtmf)
        start = None if speak_after_agent_ms is not None else int(speak_at_s * 50)
        try:
            for i in range(int(seconds * 50)):
                await asyncio.sleep(max(0.0, tl.t0 + i * 0.02 - time.monotonic()))
                if rx.done():
                    break
                if start is None and res.first_audio_s is not None:
                    start = int((res.first_audio_s + (speak_after_agent_ms or 0) / 1000) * 50) + 1
                k = i - start if start is not None and i >= start else -1
                chunk = speech[k * CHUNK : (k + 1) * CHUNK] if k >= 0 else b""
                chunk = chunk + silence[len(chunk) :]
                sent[i * CHUNK : (i + 1) * CHUNK] = np.frombuffer(ulaw_decode(chunk), dtype="<i2")
                payload = base64.b64encode(chunk).decode()
                await ws.send(msg("media", media={"track": "inbound", "chunk": str(i + 1), "timestamp": str(i * 20),
                                                  "payload": payload}))
                while keys and keys[0][0] <= i * 0.02:
                    await ws.send(msg("dtmf", dtmf={"track": "inbound_track", "digit": keys.pop(0)[1]}))
            if stop and not rx.done():
                await ws.send(msg("stop", stop={"accountSid": "AC" + "0" * 32, "callSid": call_sid}))
        except ConnectionClosed:
            pass
        await asyncio.sleep(0.1)
        await ws.close()
        await rx
        res.close_code = ws.close_code
    res.sent, res.heard = _to_16k(sent.tobytes()), _to_16k(tl.pcm.tobytes())
    res.speak_start_frame = start if start is not None else -1
    return res


# -- AudioSocket ----------------------------------------------------------------------------------------------
def frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BH", kind, len(payload)) + payload


async def audiosocket_call(port: int, caller: np.ndarray, seconds: float, call_uuid: str, *, kind: int = 0x10,
                           speak_at_s: float = 0.0, speak_after_agent_ms: float | None = None,
                           dtmf: tuple[tuple[float, str], ...] = (), hangup: bool = True) -> Heard:
    """Stream `caller` as Asterisk's AudioSocket() does (slin 8 kHz, 0x10, or 16 kHz, 0x12) and record the reply."""
    rate = 8000 if kind == 0x10 else 16000
    size = rate // 50 * 2
    speech = _to_8k(caller) if rate == 8000 else to_pcm(caller)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    heard = np.zeros(int(seconds * rate) + rate, dtype=np.int16)
    sent = np.zeros_like(heard)
    res = Heard(np.zeros(0), np.zeros(0), -1)
    cursor = [0]

    async def receive() -> None:
        try:
            while True:
                head = await reader.readexactly(3)
                k, n = struct.unpack(">BH", head)
                body = await reader.readexactly(n) if n else b""
                if k == 0x00:
                    break
                assert k == kind, f"server answered with kind {k:#x} to {kind:#x}"
                if res.first_audio_s is None:
                    res.first_audio_s = time.monotonic() - t0
                x = np.frombuffer(body, dtype="<i2")
                pos = max(cursor[0], int((time.monotonic() - t0) * rate))
                end = min(pos + len(x), len(heard))
                heard[pos:end] = x[: end - pos]
                cursor[0] = pos + len(x)
                res.media_msgs += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        res.hung_up_s = time.monotonic() - t0

    writer.write(frame(0x01, uuidlib.UUID(call_uuid).bytes))
    rx = asyncio.create_task(receive())
    keys = list(dtmf)
    start = None if speak_after_agent_ms is not None else int(speak_at_s * 50)
    try:
        for i in range(int(seconds * 50)):
            await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
            if rx.done():
                break
            if start is None and res.first_audio_s is not None:
                start = int((res.first_audio_s + (speak_after_agent_ms or 0) / 1000) * 50) + 1
            k = i - start if start is not None and i >= start else -1
            chunk = speech[k * size : (k + 1) * size] if k >= 0 else b""
            chunk = chunk + bytes(size - len(chunk))
            sent[i * size // 2 : (i + 1) * size // 2] = np.frombuffer(chunk, dtype="<i2")
            writer.write(frame(kind, chunk))
            while keys and keys[0][0] <= i * 0.02:
                writer.write(frame(0x03, keys.pop(0)[1].encode()))
            await writer.drain()
        if hangup and not rx.done():
            writer.write(frame(0x00))
            await writer.drain()
    except ConnectionError:
        pass
    await asyncio.sleep(0.1)
    writer.close()
    await rx
    conv = (lambda pcm: _to_16k(pcm)) if rate == 8000 else to_array
    res.sent, res.heard = conv(sent.tobytes()), conv(heard.tobytes())
    res.speak_start_frame = start if start is not None else -1
    return res
