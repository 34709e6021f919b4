"""The browser softphone: `GET /phone` serves a page (phone_page.py) that calls an agent over WebRTC.

Signalling is one WebSocket per call at `/phone/ws` (the `websockets` library, which also serves the page): the
page sends `{"type": "call", "to", "sdp"}` with a complete offer, gets `{"type": "answer", "sdp", "agent"}`, then
the call's events (`{"type": "event", "name", ...}`: what the agent says, barge-ins, keys, the end) and sends
`dtmf` and `hangup`; closing the socket hangs up. Media is aiortc's: the browser's Opus 48 kHz becomes mono PCM,
then 16 kHz frames through the stateful polyphase filter; the agent's frames go back up to 48 kHz the same way,
one per 20 ms, paced by the RTP sender's requests.

aiortc's receiver holds 4 audio packets before it decodes (a fixed prefetch in its jitter buffer), which
this path adds on the way in. aioice (aiortc's ICE) never offers loopback candidates, so a softphone on loopback
(the default) could not connect without a network interface; while `listen` is a loopback address, ICE is given
that address alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import hmac
import ipaddress
import json
import time
import urllib.parse
import uuid
from http import HTTPStatus
from typing import Any

import aioice.ice
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from telephony.config import Config, WebRtcTransport
from telephony.logs import event
from telephony.transports.leg import Host, TransportCall
from telephony.transports.phone_page import PAGE
from telephony.transports.stream import TICK_S, SendAudio, StreamCall, WireAudio
from telephony.transports.ws_server import WebSocketTransport

NAME = "webrtc"
RATE = 48000
SAMPLES = RATE // 50
SHOWN = {"agent_say", "barge_in", "barge_in_paused", "barge_in_resumed", "dtmf", "turn", "agent_transfer"}
"""Session events the page shows (with `call_answered` and `call_end`)."""


def _loopback_ice(address: str) -> None:
    ip = ipaddress.ip_address(address)
    if ip.is_loopback:
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [str(ip)]


class _AgentTrack(MediaStreamTrack):
    """The agent's audio as 20 ms 48 kHz frames; each request is one media clock tick."""

    kind = "audio"

    def __init__(self, stream: StreamCall) -> None:
        super().__init__()
        self.stream = stream
        self._due: float | None = None
        self._pts = 0

    async def recv(self) -> AudioFrame:
        loop = asyncio.get_running_loop()
        self._due = loop.time() if self._due is None else self._due + TICK_S
        if (delay := self._due - loop.time()) > 0:
            await asyncio.sleep(delay)
        elif -delay > 5 * TICK_S:
            self._due = loop.time()
        pcm = next((o.payload for o in self.stream.tick(time.monotonic()) if isinstance(o, SendAudio)), None)
        samples = np.frombuffer(pcm, dtype="<i2") if pcm is not None else np.zeros(SAMPLES, dtype=np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._pts, fractions.Fraction(1, RATE)
        self._pts += samples.size
        return frame


def _mono48(frame: AudioFrame) -> bytes:
    """A decoded frame as mono PCM16 at its own rate (Opus decodes to 48 kHz, packed stereo)."""
    a = frame.to_ndarray().astype(np.int32)
    channels = len(frame.layout.channels)
    a = a.mean(axis=0) if frame.format.is_planar else a.reshape(-1, channels).mean(axis=1)
    return bytes(a.astype("<i2").tobytes())


class WebRtcServer(WebSocketTransport):
    def __init__(self, host: Host, config: Config) -> None:
        cfg = config.transports.webrtc
        assert cfg is not None
        super().__init__(NAME, host, config, cfg)
        self.cfg: WebRtcTransport = cfg

    async def start(self) -> None:
        _loopback_ice(self.cfg.listen)
        await self._listen(self.cfg, self._serve, self._http, 256 * 1024,
                           f"http://{self.cfg.listen}:{self.cfg.port}/phone")

    def _http(self, ws: ServerConnection, request: Request) -> Response | None:
        url = urllib.parse.urlsplit(request.path)
        if self.token is not None:
            got = urllib.parse.parse_qs(url.query).get("token", [""])[0]
            if not hmac.compare_digest(got.encode(), self.token.encode()):
                return ws.respond(HTTPStatus.UNAUTHORIZED, "this phone needs ?token=...\n")
        if url.path == "/phone/ws":
            return None
        if url.path == "/phone":
            body = PAGE.encode()
            headers = Headers([("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))),
                               ("Cache-Control", "no-store")])
            return Response(200, "OK", headers, body)
        return ws.respond(HTTPStatus.NOT_FOUND, f"nothing at {url.path}; the phone is at /phone\n")

    async def _serve(self, ws: ServerConnection) -> None:
        pc: RTCPeerConnection | None = None
        call: TransportCall | None = None
        why, reason = "closed", ""
        tasks: set[asyncio.Task[None]] = set()
        over = False

        def tell(msg: dict[str, Any]) -> None:
            if over:
                return  # the page has had call_end; an agent that is still stopping has nothing more to show
            t = asyncio.ensure_future(_send(ws, msg))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

        try:
            offer = json.loads(await ws.recv())
            if not isinstance(offer, dict) or offer.get("type") != "call" or not isinstance(offer.get("sdp"), str):
                raise ValueError("the first message must be {type: call, to, sdp}")
            to = str(offer.get("to") or "")
            agent = (self.config.route(to) if to else None) or self.cfg.agent
            if agent is None:
                event("call_refused", transport=NAME, called=to, code=404, reason="no route")
                await ws.send(json.dumps({"type": "error", "error": f"no agent for {to!r}"}))
                return
            pc = RTCPeerConnection()
            call_id = f"webrtc-{uuid.uuid4().hex[:12]}"

            def log(name: str, **fields: object) -> None:
                event(name, **fields)
                if name in SHOWN:
                    tell({"type": "event", "name": name, **fields})

            peer = pc

            def hangup() -> None:
                asyncio.ensure_future(peer.close())
                asyncio.ensure_future(ws.close(1000, "hangup"))

            call = TransportCall(self.host, NAME, call_id, "browser", to, agent, hangup, WireAudio("slin", RATE), log)
            call.leg.codec = "opus/48000"  # on the wire; WireAudio's PCM is what aiortc encodes and decodes
            assert call.stream is not None
            pc.addTrack(_AgentTrack(call.stream))
            inbound: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

            @pc.on("track")
            def _track(track: MediaStreamTrack) -> None:
                if track.kind == "audio" and not inbound.done():
                    inbound.set_result(track)

            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            if not inbound.done():
                raise ValueError("the offer has no audio track")
            self.calls.add(call)
            event("call_answered", call=call_id, agent=agent, codec="opus/48000", transport=NAME, answer_ms=0.0)
            await ws.send(json.dumps({"type": "answer", "sdp": pc.localDescription.sdp, "agent": agent}))
            call.start(None)
            consume = asyncio.ensure_future(_consume(inbound.result(), call))
            try:
                async for raw in ws:
                    msg = json.loads(raw)
                    if msg.get("type") == "dtmf" and str(msg.get("digit", "")) in "0123456789*#ABCD":
                        call.dtmf(str(msg["digit"]))
                    elif msg.get("type") == "hangup":
                        why = "hangup"
                        break
            finally:
                consume.cancel()
        except (ValueError, json.JSONDecodeError) as e:
            why, reason = "protocol_error", str(e)
            event("transport_error", transport=NAME, call=call.call_id if call else None, error=reason)
            await _send(ws, {"type": "error", "error": reason})
        except ConnectionClosed:
            pass
        finally:
            if call is not None:
                self.calls.discard(call)
                call.end(why, reason)
                over = True
                await asyncio.gather(*tasks, return_exceptions=True)
                await _send(ws, {"type": "event", "name": "call_end", "reason": call.leg.session.record.end_reason})
            if pc is not None:
                await pc.close()
            await ws.close()


async def _consume(track: MediaStreamTrack, call: TransportCall) -> None:
    """The caller's audio into the call's media, frame by frame as aiortc decodes it."""
    assert call.stream is not None
    try:
        while True:
            frame = await track.recv()
            assert isinstance(frame, AudioFrame)
            if frame.sample_rate != RATE:
                raise ValueError(f"decoded audio at {frame.sample_rate} Hz; expected {RATE}")
            call.stream.on_audio(time.monotonic(), _mono48(frame))
    except MediaStreamError:
        call.hangup("remote_ended")


async def _send(ws: ServerConnection, msg: dict[str, Any]) -> None:
    with contextlib.suppress(ConnectionClosed):
        await ws.send(json.dumps(msg, default=str))
