"""The delay each transport adds each way (media stream, AudioSocket, SIP, WebRTC), echo agent, p50/p99.

The real gateway (`Gateway.run`: SIP on a spare port and the three stream transports) runs in this process on
uvloop, and its `CallMedia.on_inbound` and `CallMedia.next_audio` are wrapped to stamp each frame. Every stamp is
wall-clock time (`time.time()`, one clock for this process, the caller process and tcpdump). Per transport:
- media stream, AudioSocket: a client in this process streams 20 ms frames in real time; in = client send ->
  `on_inbound` (socket, framing, JSON/base64 or AudioSocket header, µ-law, resampling); out = `next_audio` hands
  an agent frame over -> the client has it (resampling, encoding, socket). Frames are matched by their order.
- SIP: the pjsua2 test caller (telephony/simulator/caller.py, another process, PCMU) speaks the same audio, and
  tcpdump on loopback stamps the RTP packets: in = the caller's packet on the wire -> `on_inbound` (pjmedia's
  jitter buffer, G.711 decoding, the conference bridge's 8 -> 16 kHz and its 20 ms tick); out = `next_audio` ->
  the packet on the wire (bridge tick, 16 -> 8 kHz, encoding, RTP). RTP packets and frames do not line up one to
  one, so the audio itself aligns them: the sample lag at which the two tracks correlate best maps each 20 ms of
  one side to the frame on the other side that holds its last sample.
- WebRTC (the `/phone` page's path, aiortc on both ends): in = an aiortc client in this process hands a 48 kHz
  frame to its Opus encoder -> `on_inbound` (encoding, SRTP, ICE on loopback, the server's receive buffer, which
  holds 4 packets before decoding, Opus decoding, 48 -> 16 kHz), aligned by the audio as for SIP; out =
  `next_audio` -> the server's RTP packet handed to DTLS-SRTP (16 -> 48 kHz, Opus encoding), matched by RTP
  timestamp (one packet per 20 ms request of the server's track). The client's own receive buffer is in neither.
The echo agent's own wait for the next tick (0-20 ms) is in neither figure. The SIP row needs tcpdump and the right
to capture on loopback (root). Prints a table and writes bench/results/transports.json.
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import json
import os
import platform
import signal
import struct
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
import yaml
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcdtlstransport import RTCDtlsTransport
from av import AudioFrame
from websockets.asyncio.client import connect

from bench.run import RESULTS, pct
from media.frames import FRAME_BYTES, SILENCE
from media.g711 import ulaw_decode, ulaw_encode
from media.pipeline import CallMedia
from media.resample import resample
from telephony.app import Gateway
from telephony.config import parse_config
from tests import audio
from tests.integration.capture import Capture
from tests.integration.peers import call, free_port, gateway_config, rtp_range
from tests.prompts import SOUNDS

CLOCK = time.time
"""tcpdump stamps packets with the wall clock, so every stamp here is taken with it."""
MAX_LAG = 16000
"""Alignment by correlation searches lags up to 1 s either way (16 kHz samples)."""


class Stamps:
    """Times and frames the media pipeline took in and gave out, per call (wraps CallMedia's two methods), and the
    RTP packets aiortc handed to DTLS-SRTP in this process: (time, SSRC, RTP timestamp), once sent."""

    def __init__(self) -> None:
        self.inbound: dict[int, list[tuple[float, bytes]]] = {}
        self.outbound: dict[int, list[tuple[float, bytes | None]]] = {}
        self.rtp: list[tuple[float, int, int]] = []
        on_inbound, next_audio = CallMedia.on_inbound, CallMedia.next_audio
        send_rtp = RTCDtlsTransport._send_rtp

        def wrapped_in(media: CallMedia, now: float, frame: bytes) -> None:
            self.inbound.setdefault(id(media), []).append((CLOCK(), frame))
            on_inbound(media, now, frame)

        def wrapped_out(media: CallMedia, now: float) -> bytes | None:
            out = next_audio(media, now)
            self.outbound.setdefault(id(media), []).append((CLOCK(), out))
            return out

        async def wrapped_rtp(transport: RTCDtlsTransport, data: bytes) -> None:
            t = CLOCK()
            await send_rtp(transport, data)
            if len(data) >= 12 and not 192 <= data[1] <= 223:  # RTP, not RTCP
                self.rtp.append((t, *struct.unpack(">II", data[8:12] + data[4:8])))

        CallMedia.on_inbound = wrapped_in  # type: ignore[method-assign,assignment]
        CallMedia.next_audio = wrapped_out  # type: ignore[method-assign,assignment]
        RTCDtlsTransport._send_rtp = wrapped_rtp  # type: ignore[method-assign,assignment]

    def take(self) -> tuple[list[tuple[float, bytes]], list[tuple[float, bytes | None]]]:
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
        sent.append(CLOCK())
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
                    got.append(CLOCK())
                    heard.append(ulaw_decode(base64.b64decode(m["media"]["payload"])))

        task = asyncio.create_task(rx())

        async def send(i: int, f: bytes) -> None:
            payload = base64.b64encode(f).decode()
            await ws.send(json.dumps({"event": "media", "streamSid": "MZbench",
                                      "media": {"track": "inbound", "chunk": str(i + 1), "payload": payload}}))

        sent = await _stream(send, frames)
        await asyncio.sleep(1.0)  # the echo of the last frames comes back
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
            got.append(CLOCK())
            heard.append(body)

    task = asyncio.create_task(rx())

    async def send(i: int, f: bytes) -> None:
        writer.write(struct.pack(">BH", 0x10, len(f)) + f)
        await writer.drain()

    sent = await _stream(send, frames)
    await asyncio.sleep(1.0)  # the echo of the last frames comes back
    writer.write(b"\x00\x00\x00")
    await writer.drain()
    await task
    writer.close()
    return sent, got, heard


async def sip_call(sip_port: int, pcm16: bytes, seconds: float, tmp: Path) -> tuple[list[Any], list[Any]]:
    """The caller's RTP packets to the gateway and the gateway's to the caller, as tcpdump saw them."""
    wav = audio.write_wav(tmp / "caller.wav", audio.to_array(pcm16))
    rtp = rtp_range(4)[0]
    cap = await asyncio.to_thread(Capture, tmp / "sip.pcap", "lo", sip_port)
    res = await asyncio.to_thread(call, f"sip:echo@127.0.0.1:{sip_port}", "--play", str(wav), "--speak-at-s", "0",
                                  "--duration", f"{seconds + 0.5:.1f}", "--rtp-port", str(rtp))
    packets = await asyncio.to_thread(cap.stop)
    assert res["answered"] and res["codec"].upper().startswith("PCMU"), res
    return [p for p in packets if p.src[1] == rtp], [p for p in packets if p.dst[1] == rtp]


class _Speaker(MediaStreamTrack):
    """The caller's audio as 20 ms 48 kHz frames in real time; stamps each frame as it goes to the encoder."""

    kind = "audio"

    def __init__(self, pcm48: np.ndarray) -> None:
        super().__init__()
        self.pcm = pcm48
        self.sent: list[float] = []
        self._t0: float | None = None

    async def recv(self) -> AudioFrame:
        i = len(self.sent)
        self._t0 = time.monotonic() if self._t0 is None else self._t0
        await asyncio.sleep(max(0.0, self._t0 + i * 0.02 - time.monotonic()))
        chunk = self.pcm[i * 960 : (i + 1) * 960]
        frame = AudioFrame.from_ndarray(np.pad(chunk, (0, 960 - len(chunk))).reshape(1, -1), format="s16",
                                        layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
        self.sent.append(CLOCK())
        return frame


async def webrtc_call(port: int, pcm16: bytes, seconds: float) -> tuple[list[float], int]:
    """A call to the echo agent as the `/phone` page places it; the frames' send times and the client's SSRC."""
    speaker = _Speaker(np.frombuffer(resample(pcm16, 16000, 48000), dtype="<i2"))
    pc = RTCPeerConnection()
    pc.addTrack(speaker)
    await pc.setLocalDescription(await pc.createOffer())
    async with connect(f"ws://127.0.0.1:{port}/phone/ws") as ws:
        await ws.send(json.dumps({"type": "call", "to": "echo", "sdp": pc.localDescription.sdp}))
        answer = json.loads(await ws.recv())
        assert answer["type"] == "answer", answer
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        await asyncio.sleep(seconds + 0.3)
        await ws.send(json.dumps({"type": "hangup"}))
        async for _ in ws:  # the call's events, until the gateway closes
            pass
    ssrc = pc.getSenders()[0]._ssrc
    await pc.close()
    return speaker.sent, ssrc


def _delays(a: list[float], b: list[float]) -> list[float]:
    n = min(len(a), len(b))
    return [(y - x) * 1000 for x, y in zip(a[:n], b[:n], strict=True)]


def _aligned(src_t: list[float], src: bytes, dst_t: list[float], dst: bytes,
             keep: list[bool] | None = None) -> tuple[list[float], float, float]:
    """Delay (ms) from each 20 ms of `src` (16 kHz PCM; one time per frame) to the frame of `dst` that holds its last
    sample, at the lag where `dst` correlates best with `src`; also that lag (ms) and the normalised correlation.
    `keep`: which frames of `src` count."""
    x, y = audio.to_array(src).astype(np.float64), audio.to_array(dst).astype(np.float64)
    size = 1 << (len(x) + len(y)).bit_length()
    c = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(x, size)), size)
    lags = np.r_[np.arange(MAX_LAG + 1), np.arange(-MAX_LAG, 0)]
    lag = int(lags[int(np.argmax(c[lags]))])
    peak = float(c[lag] / np.sqrt((x**2).sum() * (y**2).sum()))
    delays = []
    for k, t in enumerate(src_t):
        j = (k * 320 + 319 + lag) // 320
        if 0 <= j < len(dst_t) and (keep is None or keep[k]):
            delays.append((dst_t[j] - t) * 1000)
    return delays, lag / 16, peak


def _caller_audio(seconds: float) -> bytes:
    """Different prompts, each followed by 0.5 s of silence, so that the audio correlates with itself at one lag."""
    clips = sorted(SOUNDS.glob("vm-*.wav"))
    parts: list[np.ndarray] = []
    while sum(len(p) for p in parts) < seconds * 16000:
        parts += [audio.read_wav(clips[len(parts) // 2 % len(clips)]), np.zeros(8000)]
    return audio.to_pcm(np.concatenate(parts)[: int(seconds * 16000)])


def _row(d_in: list[float], d_out: list[float], **extra: Any) -> dict[str, Any]:
    return {"frames_in": len(d_in), "frames_out": len(d_out), "in_p50_ms": pct(d_in, 50),
            "in_p99_ms": pct(d_in, 99), "out_p50_ms": pct(d_out, 50), "out_p99_ms": pct(d_out, 99), **extra}


async def measure(seconds: float) -> dict[str, Any]:
    port, ws_port, as_port, rtc_port = free_port(), free_port(), free_port(), free_port()
    cfg = yaml.safe_load(gateway_config(port))
    cfg["transports"] = {"media_stream": {"port": ws_port, "agent": "echo"},
                         "audiosocket": {"port": as_port, "agent": "echo"},
                         "webrtc": {"port": rtc_port, "agent": "echo"}}
    cfg["records"] = {"enabled": False}
    config = parse_config(yaml.safe_dump(cfg), "bench")
    stamps = Stamps()
    gw = Gateway(config)
    run = asyncio.create_task(gw.run())
    while True:  # the WebRTC server starts last: once it accepts, all listen
        try:
            _, w = await asyncio.open_connection("127.0.0.1", rtc_port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.1)
    pcm16 = _caller_audio(seconds)
    pcm8 = resample(pcm16, 16000, 8000)
    out: dict[str, Any] = {}
    for name, fn in (("media_stream", media_stream_call), ("audiosocket", audiosocket_call)):
        sent, got, heard = await fn(ws_port if name == "media_stream" else as_port, pcm8)
        gw_in, gw_out = stamps.take()
        d_in = _delays(sent, [t for t, _ in gw_in])
        d_out = _delays([t for t, f in gw_out if f is not None], got)
        assert len(heard) >= 0.9 * len(sent), f"{name}: {len(heard)} frames came back of {len(sent)}"
        out[name] = _row(d_in, d_out, frames_sent=len(sent), frames_back=len(heard))
        print(f"  {name}: {out[name]}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        wire_in, wire_out = await sip_call(port, pcm16, seconds, Path(tmp))
    gw_in, gw_out = stamps.take()
    rx16 = resample(ulaw_decode(b"".join(p.payload for p in wire_in)), 8000, 16000)
    d_in, lag_in, peak_in = _aligned([p.t for p in wire_in], rx16, [t for t, _ in gw_in], b"".join(f for _, f in gw_in))
    tx16 = resample(ulaw_decode(b"".join(p.payload for p in wire_out)), 8000, 16000)
    d_out, lag_out, peak_out = _aligned([t for t, _ in gw_out], b"".join(f or SILENCE for _, f in gw_out),
                                        [p.t for p in wire_out], tx16, [f is not None for _, f in gw_out])
    assert min(peak_in, peak_out) > 0.5, f"sip: the tracks do not align (correlation {peak_in:.2f}/{peak_out:.2f})"
    out["sip"] = _row(d_in, d_out, lag_in_ms=lag_in, lag_out_ms=lag_out, correlation=[round(peak_in, 3),
                                                                                   round(peak_out, 3)])
    print(f"  sip: {out['sip']}", flush=True)

    stamps.rtp.clear()
    sent_t, client_ssrc = await webrtc_call(rtc_port, pcm16, seconds)
    gw_in, gw_out = stamps.take()
    caller = pcm16 + SILENCE * max(0, len(sent_t) - len(pcm16) // FRAME_BYTES)
    d_in, lag_in, peak_in = _aligned(sent_t, caller, [t for t, _ in gw_in], b"".join(f for _, f in gw_in))
    server = [(t, ts) for t, ssrc, ts in stamps.rtp if ssrc != client_ssrc]
    d_out = []
    for t, ts in server:  # RTP timestamp / 960: which request of the agent's track (one next_audio each) it carries
        n = ((ts - server[0][1]) % 2**32) // 960
        if n < len(gw_out) and gw_out[n][1] is not None:
            d_out.append((t - gw_out[n][0]) * 1000)
    assert peak_in > 0.5 and len(d_out) > len(sent_t) // 2, f"webrtc: correlation {peak_in:.2f}, {len(d_out)} out"
    out["webrtc"] = _row(d_in, d_out, lag_in_ms=lag_in, correlation=round(peak_in, 3),
                         server_packets=len(server), agent_requests=len(gw_out))
    print(f"  webrtc: {out['webrtc']}", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # the gateway's own shutdown path
    await run
    return out


def main() -> int:
    seconds = float(os.environ.get("BENCH_TRANSPORT_S", "20"))
    load = os.getloadavg()
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
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_average_1_5_15": [round(x, 2) for x in load]}, **res}
    (RESULTS / "transports.json").write_text(json.dumps(out, indent=2))
    print(f"\nwrote {RESULTS / 'transports.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
