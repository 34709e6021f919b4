"""The media-stream WebSocket server: a CPaaS (Twilio Media Streams and look-alikes) streams a call to us.

One connection is one call. `start` routes it (its `customParameters.to` through the config's routes, else the
transport's default agent); caller audio goes to the call's `CallMedia` as it arrives; a 20 ms clock sends the
agent's audio back, a `mark` after each utterance, and `clear` the moment the caller barges in. A protocol error
ends that call alone: a `transport_error` log line, a close code (1007 for bad data), and the call's record.
The WebSocket itself is the `websockets` library's; the message rules are in `twilio.py`.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import urllib.parse
from collections import deque
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from telephony.config import Config, MediaStreamTransport
from telephony.logs import event
from telephony.transports import twilio
from telephony.transports.leg import Host, TransportCall
from telephony.transports.stream import Out, SendMark, WireAudio
from telephony.transports.ws_server import WebSocketTransport

NAME = "media_stream"
MAX_MESSAGE = 64 * 1024
"""Larger WebSocket messages are refused by the library (close 1009): a 200 ms payload is about 2 KiB."""


class MediaStreamServer(WebSocketTransport):
    def __init__(self, host: Host, config: Config) -> None:
        cfg = config.transports.media_stream
        assert cfg is not None
        super().__init__(NAME, host, config, cfg)
        self.cfg: MediaStreamTransport = cfg

    async def start(self) -> None:
        await self._listen(self.cfg, self._serve, self._admit, MAX_MESSAGE,
                           f"ws://{self.cfg.listen}:{self.cfg.port}{self.cfg.path}")

    def _admit(self, ws: ServerConnection, request: Request) -> Response | None:
        path = urllib.parse.urlsplit(request.path).path
        if path != self.cfg.path:
            event("transport_refused", transport=NAME, peer=_peer(ws), code=404, reason=f"no endpoint {path}")
            return ws.respond(HTTPStatus.NOT_FOUND, f"no media stream endpoint at {path}\n")
        if self.token is not None:
            got = request.headers.get("Authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
                event("transport_refused", transport=NAME, peer=_peer(ws), code=401, reason="bad or missing token")
                return ws.respond(HTTPStatus.UNAUTHORIZED, "a bearer token is required\n")
        return None

    def _route(self, start: twilio.Start) -> str | None:
        to = start.custom.get("to", "")
        return (self.config.route(to) if to else None) or self.cfg.agent

    async def _serve(self, ws: ServerConnection) -> None:
        state = twilio.StreamState()
        call: TransportCall | None = None
        marks: deque[str] = deque()
        unknown: set[str] = set()
        why, reason = "closed", ""

        async def send(outs: list[Out]) -> None:
            assert state.start is not None
            for out in outs:
                if isinstance(out, SendMark):
                    marks.append(out.name)
                await ws.send(twilio.encode(out, state.start.stream_sid))

        try:
            async for data in ws:
                msg = state.receive(data)
                if isinstance(msg, twilio.Media):
                    if call is not None and msg.track == "inbound":
                        assert call.stream is not None
                        outs = call.stream.on_audio(time.monotonic(), msg.payload)
                        if outs:
                            await send(outs)
                elif isinstance(msg, twilio.Start):
                    call = self._open(ws, msg)
                    if call is None:
                        await ws.close(CloseCode.POLICY_VIOLATION, "no route")
                        return
                    self.calls.add(call)
                    call.start(send)
                elif isinstance(msg, twilio.Dtmf) and call is not None:
                    call.dtmf(msg.digit)
                elif isinstance(msg, twilio.Mark) and call is not None:
                    self._mark_played(call, marks, msg.name)
                elif isinstance(msg, twilio.Stop):
                    why = "stop"
                    break
                elif isinstance(msg, twilio.Unknown) and msg.event not in unknown:
                    unknown.add(msg.event)
                    event("transport_warning", transport=NAME, call=call.call_id if call else None,
                          peer=_peer(ws), problem=f"unknown event {msg.event!r} ignored")
            else:
                why, reason = _closed(ws)
        except twilio.ProtocolError as e:
            why, reason = "protocol_error", str(e)
            event("transport_error", transport=NAME, call=call.call_id if call else None, peer=_peer(ws),
                  error=reason)
            await ws.close(CloseCode.INVALID_DATA, reason[:120])
        except ConnectionClosed:
            why, reason = _closed(ws)
        finally:
            if call is not None:
                self.calls.discard(call)
                call.end(why, reason)
                await ws.close()

    def _open(self, ws: ServerConnection, start: twilio.Start) -> TransportCall | None:
        agent = self._route(start)
        caller, called = start.custom.get("from", ""), start.custom.get("to", "")
        if agent is None:
            event("call_refused", transport=NAME, call=start.call_sid, called=called, code=404, reason="no route")
            return None
        def hangup() -> None:
            asyncio.ensure_future(ws.close(CloseCode.NORMAL_CLOSURE, "hangup"))

        call = TransportCall(self.host, NAME, start.call_sid, caller, called, agent, hangup, WireAudio("mulaw", 8000))
        event("call_answered", call=start.call_sid, agent=agent, codec=call.leg.codec, transport=NAME,
              stream=start.stream_sid, peer=_peer(ws), answer_ms=0.0)
        return call

    @staticmethod
    def _mark_played(call: TransportCall, marks: deque[str], name: str) -> None:
        if marks and marks[0] == name:
            marks.popleft()
            event("mark_played", call=call.call_id, mark=name)
        else:
            event("transport_warning", transport=NAME, call=call.call_id,
                  problem=f"mark {name!r} returned, expected {marks[0] if marks else 'none'!r}")
            if name in marks:
                while marks.popleft() != name:
                    pass


def _peer(ws: ServerConnection) -> str:
    addr = ws.remote_address
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


def _closed(ws: ServerConnection) -> tuple[str, str]:
    """Why a connection ended without `stop`: `closed` with the close code, 1006 for an abrupt close."""
    rcvd = ws.close_code
    return "closed", f"close {rcvd if rcvd is not None else 1006}"
