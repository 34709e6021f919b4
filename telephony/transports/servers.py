"""The stream transports a config asks for, as one list the gateway starts, drains and closes."""

from __future__ import annotations

from typing import Protocol

from telephony.config import Config
from telephony.transports.leg import Host, TransportCall


class StreamTransport(Protocol):
    calls: set[TransportCall]

    async def start(self) -> None: ...

    def stop_accepting(self) -> None: ...

    def hangup_all(self, reason: str) -> None: ...

    async def close(self) -> None: ...


def stream_transports(host: Host, config: Config) -> list[StreamTransport]:
    from telephony.transports.audiosocket import AudioSocketServer
    from telephony.transports.media_stream_ws import MediaStreamServer

    out: list[StreamTransport] = []
    if config.transports.media_stream is not None:
        out.append(MediaStreamServer(host, config))
    if config.transports.audiosocket is not None:
        out.append(AudioSocketServer(host, config))
    if config.transports.webrtc is not None:
        from telephony.transports.webrtc import WebRtcServer  # aiortc loads only when the softphone is on

        out.append(WebRtcServer(host, config))
    return out
