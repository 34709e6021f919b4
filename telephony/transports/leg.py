"""A call that came in on a stream transport: the gateway's leg (media + session) plus the transport's clock.

The gateway builds, starts and finishes the leg as it does for SIP (`Gateway.open_leg` / `start_leg` /
`finish_leg`: one `call_end` event and one call record per call); this module adds what SIP gets from pjsua: a
media clock, the call actions a stream peer can carry out, and ending exactly once however the connection goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from agents.session import CallActions, Log
from media.events import MediaEvent
from telephony.logs import event
from telephony.transports.stream import Out, StreamCall, WireAudio, run_clock

if TYPE_CHECKING:
    from telephony.app import Leg

TRANSFER_UNSUPPORTED = 501
"""What a transfer on a stream transport reports to the agent: the peer has no way to carry one out."""


class Host(Protocol):
    """What a transport needs from the gateway (telephony.app.Gateway)."""

    def open_leg(self, key: int, call_id: str, caller: str, called: str, agent: str, actions: CallActions,
                 transport: str = "sip", observe: Callable[[MediaEvent], None] | None = None,
                 log: Log = event) -> Leg: ...

    def start_leg(self, leg: Leg) -> None: ...

    def finish_leg(self, leg: Leg, why: str, code: int = 0, reason: str = "") -> None: ...


class _Actions:
    """CallActions of a stream call: hang-up closes the connection; a stream peer can neither transfer nor send
    DTMF, so a transfer fails at once (the agent hears 501) and DTMF is logged as not sent."""

    def __init__(self, call: TransportCall) -> None:
        self.call = call

    def hangup(self) -> None:
        self.call.hangup()

    def transfer(self, uri: str, attended: bool = False) -> None:
        c = self.call
        event("transfer_result", call=c.call_id, code=TRANSFER_UNSUPPORTED,
              reason=f"the {c.transport} transport cannot transfer (target {uri})")
        asyncio.get_running_loop().call_soon(c.leg.session.on_transfer_result, TRANSFER_UNSUPPORTED)

    def send_dtmf(self, digits: str) -> None:
        event("dtmf_not_sent", call=self.call.call_id, digits=digits,
              reason=f"the {self.call.transport} transport cannot send DTMF")


class TransportCall:
    """One live stream call. `close` ends the connection from our side (it must not block)."""

    def __init__(self, host: Host, transport: str, call_id: str, caller: str, called: str, agent: str,
                 close: Callable[[], None], wire: WireAudio | None = None, log: Log = event) -> None:
        self.host = host
        self.transport = transport
        self.call_id = call_id
        self._close = close
        self._log = log
        self.stream: StreamCall | None = None
        self.leg = host.open_leg(-1, call_id, caller, called, agent, _Actions(self), transport, self._observe, log)
        self.stream = StreamCall(self.leg.session.media, wire)
        if wire is not None:
            self.leg.codec = wire.label
        self._clock: asyncio.Task[None] | None = None
        self.ended = False

    def _observe(self, ev: MediaEvent) -> None:
        if self.stream is not None:
            self.stream.observe(ev)

    def set_wire(self, wire: WireAudio) -> None:
        assert self.stream is not None
        self.stream.wire = wire
        self.leg.codec = wire.label

    def start(self, send: Callable[[list[Out]], Awaitable[None]] | None) -> None:
        """Run the agent and, given `send`, the media clock (it stops when `send` fails: the connection is gone).
        Without `send` the transport ticks `stream` itself (WebRTC: the RTP sender asks for each frame)."""
        assert self.stream is not None
        self.host.start_leg(self.leg)
        if send is not None:
            self._clock = asyncio.ensure_future(run_clock(self.stream, send))

    def dtmf(self, digit: str) -> None:
        """A key from the peer, as SIP's: masked in the log during secure capture, and to the call's recording."""
        session = self.leg.session
        self._log("dtmf", call=self.call_id, digit="x" if session.secure else digit, method=self.transport,
                  duplicate=False)
        session.on_dtmf(digit)
        if self.leg.recording is not None:
            self.leg.recording.on_dtmf(digit)

    def hangup(self, reason: str = "") -> None:
        """Our side ends the call (the agent, a timeout, shutdown: `reason` unless the session gave one)."""
        rec = self.leg.session.record
        rec.end_reason = rec.end_reason or reason
        self._close()

    def end(self, why: str, reason: str = "") -> None:
        """The connection is over: stop the clock and finish the leg (once). `closed`: the peer went away first."""
        if self.ended:
            return
        self.ended = True
        if why == "closed" and not self.leg.session.record.end_reason:
            self._log("transport_closed", transport=self.transport, call=self.call_id, reason=reason)
        if self._clock is not None:
            self._clock.cancel()
        self.host.finish_leg(self.leg, why, 0, reason)
