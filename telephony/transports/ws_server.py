"""What the WebSocket transports (media stream, WebRTC signalling) share: the token, listening, draining, closing."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from telephony.config import Config, MediaStreamTransport, WebRtcTransport
from telephony.errors import VoicegateError
from telephony.logs import event
from telephony.transports.leg import Host, TransportCall


class WebSocketTransport:
    def __init__(self, name: str, host: Host, config: Config, cfg: MediaStreamTransport | WebRtcTransport) -> None:
        self.name = name
        self.host = host
        self.config = config
        self.token: str | None = None
        if cfg.token_env is not None:
            self.token = os.environ.get(cfg.token_env)
            if not self.token:
                raise VoicegateError(f"transports.{name}.token_env names {cfg.token_env}, which is not set")
        self.calls: set[TransportCall] = set()
        self._server: Server | None = None

    async def _listen(self, cfg: MediaStreamTransport | WebRtcTransport,
                      handler: Callable[[ServerConnection], Awaitable[None]],
                      admit: Callable[[ServerConnection, Request], Response | None], max_size: int, url: str) -> None:
        try:
            self._server = await serve(handler, cfg.listen, cfg.port, process_request=admit, max_size=max_size,
                                       compression=None)
        except OSError as e:
            raise VoicegateError(f"transports.{self.name} cannot listen on {cfg.listen}:{cfg.port}: "
                                 f"{e.strerror or e}") from None
        event("transport_listening", transport=self.name, address=url, token=self.token is not None)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=False)

    def hangup_all(self, reason: str) -> None:
        for call in list(self.calls):
            call.hangup(reason)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
