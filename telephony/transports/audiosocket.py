"""The Asterisk AudioSocket server: a dialplan's `AudioSocket(UUID,host:port)` hands a call to voicegate over TCP.

One connection is one call. The UUID frame routes it (`transports.audiosocket.uuids`, else the default agent); the
first audio frame fixes the format (0x10 slin 8 kHz or 0x12 slin 16 kHz) and we answer in the same; a 20 ms clock
writes the agent's audio, and only while there is some, so a barge-in stops the writes in the tick it pauses
playout. Hang-up is a 0x00 frame either way; a protocol error ends that call alone (a `transport_error` log line,
a 0x00 frame, and the call's record). The protocol has no credentials: a peer outside `allow` is closed on accept,
before it reads a byte. Framing rules are in `audiosocket_frames.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from telephony.config import AudioSocketTransport, Config
from telephony.errors import VoicegateError
from telephony.logs import event
from telephony.transports import audiosocket_frames as af
from telephony.transports.leg import Host, TransportCall
from telephony.transports.stream import Out, SendAudio, WireAudio

NAME = "audiosocket"
READ_SIZE = 4096


class AudioSocketServer:
    def __init__(self, host: Host, config: Config) -> None:
        cfg = config.transports.audiosocket
        assert cfg is not None
        self.host = host
        self.cfg: AudioSocketTransport = cfg
        self.calls: set[TransportCall] = set()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._n = 0

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.cfg.listen, self.cfg.port)
        except OSError as e:
            raise VoicegateError(f"transports.audiosocket cannot listen on {self.cfg.listen}:{self.cfg.port}: "
                                 f"{e.strerror or e}") from None
        event("transport_listening", transport=NAME, address=f"tcp://{self.cfg.listen}:{self.cfg.port}")

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    def hangup_all(self, reason: str) -> None:
        for call in list(self.calls):
            call.hangup(reason)

    async def close(self) -> None:
        self.stop_accepting()
        for w in list(self._conns):
            _hangup(w)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = writer.get_extra_info("peername")
        peer_s = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not isinstance(peer, tuple) or not self.cfg.admits(peer[0]):
            event("transport_refused", transport=NAME, peer=peer_s, reason="not in transports.audiosocket.allow")
            writer.close()
            return
        self._conns.add(writer)
        parser = af.Parser()
        call: TransportCall | None = None
        kind = af.SLIN8
        why, reason = "closed", ""

        async def send(outs: list[Out]) -> None:
            for out in outs:
                if isinstance(out, SendAudio):  # clear and marks: Asterisk buffers nothing we could drop
                    writer.write(af.encode(kind, out.payload))
            await writer.drain()

        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    reason = f"connection closed{' inside a frame' if parser.partial else ''}"
                    break
                for fr in parser.feed(data):
                    if isinstance(fr, af.CallId):
                        if call is not None:
                            raise af.ProtocolError(f"a second UUID frame ({fr.uuid}) in call {call.call_id}")
                        call = self._open(fr.uuid, writer, peer_s)
                        if call is None:
                            return
                        self.calls.add(call)
                        call.start(send)
                    elif call is None:
                        raise af.ProtocolError(f"{type(fr).__name__} frame before the UUID frame")
                    elif isinstance(fr, af.Audio):
                        assert call.stream is not None
                        if call.stream.wire is None:
                            kind = fr.kind
                            call.set_wire(WireAudio("slin", af.RATES[kind]))
                        elif fr.kind != kind:
                            raise af.ProtocolError(f"audio changed from {kind:#04x} to {fr.kind:#04x} mid-call")
                        call.stream.on_audio(time.monotonic(), fr.pcm)
                    elif isinstance(fr, af.Digit):
                        call.dtmf(fr.digit)
                    elif isinstance(fr, af.Hangup):
                        why = "hangup"
                        break
                    elif isinstance(fr, af.PeerError):
                        why, reason = "peer_error", f"error frame, code {fr.code}"
                        event("transport_error", transport=NAME, call=call.call_id, peer=peer_s, error=reason)
                        break
                if why != "closed":
                    break
        except af.ProtocolError as e:
            why, reason = "protocol_error", str(e)
            event("transport_error", transport=NAME, call=call.call_id if call else None, peer=peer_s, error=reason)
        except ConnectionError as e:
            reason = f"connection lost: {e.strerror or e}"
        finally:
            if call is not None:
                self.calls.discard(call)
                call.end(why, reason)
            _hangup(writer)
            self._conns.discard(writer)

    def _open(self, call_uuid: str, writer: asyncio.StreamWriter, peer: str) -> TransportCall | None:
        agent = self.cfg.uuids.get(call_uuid) or self.cfg.agent
        if agent is None:
            event("call_refused", transport=NAME, call=call_uuid, code=404, reason="no agent for this UUID")
            _hangup(writer)
            return None
        self._n += 1
        live = {c.call_id for c in self.calls}
        call_id = call_uuid if call_uuid not in live else f"{call_uuid}/{self._n}"  # a dialplan's fixed UUID
        call = TransportCall(self.host, NAME, call_id, "", call_uuid, agent, lambda: _hangup(writer))
        event("call_answered", call=call_id, agent=agent, transport=NAME, peer=peer, answer_ms=0.0)
        return call


def _hangup(writer: asyncio.StreamWriter) -> None:
    """Send the hang-up frame (if the socket still takes it) and close."""
    if writer.is_closing():
        return
    with contextlib.suppress(ConnectionError, RuntimeError):
        writer.write(af.encode(af.HANGUP))
    writer.close()
