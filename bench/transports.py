"""Delay the stream transports add, measured in-process over loopback with the echo agent.

The real gateway (`Gateway.run`: SIP on a spare port, both transports) runs in this process on uvloop; a client in
the same process streams 20 ms frames in real time to the echo agent over each transport. With one clock on both
sides, it times each frame:
- in: client send -> `CallMedia.on_inbound` (socket, framing, JSON/base64 or AudioSocket header, µ-law, resampling);
- out: `CallMedia.next_audio` hands the agent's frame over -> the client has it (resampling, encoding, socket);
The echo agent's own wait for the next tick (0-20 ms) is in neither figure.
Prints a table and writes bench/results/transports.json.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import platform
import signal
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import uvloop
import yaml
from websockets.asyncio.client import connect

from bench.run import RESULTS, pct
from media.g711 import ulaw_decode, ulaw_encode
from media.pipeline import CallMedia
from media.resample import resample
from telephony.app import Gateway
from telephony.config import parse_config
from tests import audio
from tests.integration.peers import free_port, gateway_config
from tests.prompts import SOUNDS


class Stamps:
    """Times at which the media pipeline took in and gave out frames, per call (wraps CallMedia's two methods)."""

    def __init__(self) -> None:
        self.inbound: dict[int, list[float]] = {}
        self.outbound: dict[int, list[float]] = {}
        on_inbound, next_audio = CallMedia.on_inbound, CallMedia.next_audio

        def wrapped_in(media: CallMedia, now: float, frame: bytes) -> None:
            self.inbound.setdefault(id(media), []).append(time.monotonic())
            on_inbound(media, now, frame)

        def wrapped_out(media: CallMedia, now: float) -> bytes | None:
            out = next_audio(media, now)
            if out is not None:
                self.outbound.setdefault(id(media), []).append(time.monotonic())
            return out

        CallMedia.on_inbound = wrapped_in  # type: ignore[method-assign,assignment]
        CallMedia.next_audio = wrapped_out  # type: ignore[method-assign,assignment]

    def take(self) -> tuple[list[float], list[float]]:
        """The one call's stamps since the last take."""
        [inb] = self.inbound.values()
        [out] = self.outbound.values()
        self.inbound.clear()
        self.outbound.clear()
        return inb, out


async def _stream(send: Callable[[int, bytes], Any], frames: list[bytes]) -> list[float]:
    t0 = time.monotonic()
    sent = []
    for i, f in enumerate(frames):
        await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
        sent.append(time.monotonic())
        await send(i, f)
    return sent


async def media_stream_call(port: int, pcm8: bytes) -> tuple[list[float], list[float], list[bytes]]:
    frames = [ulaw_encode(pcm8[i : i + 320]) for i in range(0, len(pcm8) - 319, 320)]
    got: list[float] = []
    heard: list[bytes] = []
    async with connect(f"ws://127.0.0.1:{port}/media") as ws:
        await ws.send(json.dumps({"event": "start", "start": {
            "streamSid": "MZbench", "callSid": f"CA{uuid.uuid4().hex}", "customParameters": {"to": "echo"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))

        async def rx() -> None:
            async for raw in ws:
                m = json.loads(raw)
                if m["event"] == "media":
                    got.append(time.monotonic())
                    heard.append(ulaw_decode(base64.b64decode(m["media"]["payload"])))

        task = asyncio.create_task(rx())

        async def send(i: int, f: bytes) -> None:
            payload = base64.b64encode(f).decode()
            await ws.send(json.dumps({"event": "media", "streamSid": "MZbench",
                                      "media": {"track": "inbound", "chunk": str(i + 1), "payload": payload}}))

        sent = await _stream(send, frames)
        await asyncio.sleep(0.3)
        await ws.send(json.dumps({"event": "stop", "streamSid": "MZbench", "stop": {}}))
        await task
    return sent, got, heard


async def audiosocket_call(port: int, pcm8: bytes) -> tuple[list[float], list[float], list[bytes]]:
    frames = [pcm8[i : i + 320] for i in range(0, len(pcm8) - 319, 320)]
    got: list[float] = []
    heard: list[bytes] = []
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(struct.pack(">BH", 0x01, 16) + uuid.uuid4().bytes)

    async def rx() -> None:
        while True:
            kind, n = struct.unpack(">BH", await reader.readexactly(3))
            body = await reader.readexactly(n)
            if kind == 0x00:
                return
            got.append(time.monotonic())
            heard.append(body)

    task = asyncio.create_task(rx())

    async def send(i: int, f: bytes) -> None:
        writer.write(struct.pack(">BH", 0x10, len(f)) + f)
        await writer.drain()

    sent = await _stream(send, frames)
    await asyncio.sleep(0.3)
    writer.write(b"\x00\x00\x00")
    await writer.drain()
    await task
    writer.close()
    return sent, got, heard


def _delays(a: list[float], b: list[float]) -> list[float]:
    n = min(len(a), len(b))
    return [(y - x) * 1000 for x, y in zip(a[:n], b[:n], strict=True)]


async def measure(seconds: float) -> dict[str, Any]:
    port, ws_port, as_port = free_port(), free_port(), free_port()
    cfg = yaml.safe_load(gateway_config(port))
    cfg["transports"] = {"media_stream": {"port": ws_port, "agent": "echo"},
                         "audiosocket": {"port": as_port, "agent": "echo"}}
    cfg["records"] = {"enabled": False}
    config = parse_config(yaml.safe_dump(cfg), "bench")
    stamps = Stamps()
    gw = Gateway(config)
    run = asyncio.create_task(gw.run())
    while True:  # the AudioSocket server starts last: once it accepts, both listen
        try:
            _, w = await asyncio.open_connection("127.0.0.1", as_port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.1)
    speech = audio.read_wav(SOUNDS / "vm-goodbye.wav")
    x = np.tile(np.concatenate([speech, np.zeros(8000)]), int(seconds / (len(speech) / 16000 + 0.5)) + 1)
    pcm8 = resample(audio.to_pcm(x[: int(seconds * 16000)]), 16000, 8000)
    out: dict[str, Any] = {}
    for name, fn in (("media_stream", media_stream_call), ("audiosocket", audiosocket_call)):
        sent, got, heard = await fn(ws_port if name == "media_stream" else as_port, pcm8)
        t_in, t_out = stamps.take()
        d_in, d_out = _delays(sent, t_in), _delays(t_out, got)
        assert len(heard) >= len(sent) - 5, f"{name}: {len(heard)} frames came back of {len(sent)}"
        out[name] = {"frames": len(d_in), "in_p50_ms": pct(d_in, 50), "in_p99_ms": pct(d_in, 99),
                     "out_p50_ms": pct(d_out, 50), "out_p99_ms": pct(d_out, 99)}
        print(f"  {name}: {out[name]}", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # the gateway's own shutdown path
    await run
    return out


def main() -> int:
    seconds = float(os.environ.get("BENCH_TRANSPORT_S", "20"))
    res = uvloop.run(measure(seconds))
    rows = []
    for name, r in res.items():
        rows += [(f"{name}: frame in -> CallMedia p50 / p99 (ms)", f"{r['in_p50_ms']}/{r['in_p99_ms']}"),
                 (f"{name}: agent audio -> wire p50 / p99 (ms)", f"{r['out_p50_ms']}/{r['out_p99_ms']}")]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'metric':<{width}}  value")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"bench": "transports", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": seconds,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, **res}
    (RESULTS / "transports.json").write_text(json.dumps(out, indent=2))
    print(f"\nwrote {RESULTS / 'transports.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
