"""Attended transfer (RFC 5589): the gateway calls the target itself (the consultation), and once the
target answers it REFERs the caller there with Replaces naming the consultation's dialog (pjsua2's
`Call.xferReplaces`). The caller's INVITE with Replaces takes the consultation over at the target, which hangs it
up; the caller's NOTIFY then reports the outcome as for a blind transfer (telephony/app.py hangs up on 2xx).

`Consultation` is the consultation leg's listener; `Consultations` keeps one per caller and gives up on a target
that does not answer within `RING_S`. All of it runs on the pjsua thread. The consultation leg has no media port:
the target hears silence until the caller replaces the gateway.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pjsua2 as pj

from agents.config import CONSULT_RING_S
from telephony.logs import event
from telephony.outbound import DialRefusedError

if TYPE_CHECKING:
    from telephony.call import SipCall
    from telephony.endpoint import SipStack

RING_S = CONSULT_RING_S
"""How long the target may ring before the consultation is given up (the agent hears 408)."""


class Consultation:
    """The consultation leg of one attended transfer (its CallListener)."""

    def __init__(self, owner: Consultations, caller_key: int, target: str) -> None:
        self.owner = owner
        self.caller_key = caller_key
        self.target = target
        self.started = time.monotonic()
        self.key = 0
        self.referred = False

    def on_media_ready(self, call: SipCall) -> None:
        """No port: the target hears silence until the caller replaces the gateway."""

    def on_confirmed(self, call: SipCall) -> None:
        self.owner.refer(self, call)

    def on_dtmf(self, call: SipCall, digit: str, method: str) -> None:
        """Keys from the target are not the agent's."""

    def on_disconnected(self, call: SipCall, code: int, reason: str) -> None:
        self.owner.ended(self, code, reason)

    def on_transfer_status(self, call: SipCall, code: int, reason: str) -> None:
        """The consultation transfers nothing itself."""

    def on_hold(self, call: SipCall, held: bool) -> None:
        """Whether the target holds makes no difference to the transfer."""


class Consultations:
    """The attended transfers under way, by the caller's call key."""

    def __init__(self, stack: SipStack) -> None:
        self.stack = stack
        self.by_caller: dict[int, Consultation] = {}

    def start(self, caller: SipCall, uri: str) -> None:
        """Call `uri` for `caller`'s attended transfer; a failure reaches the caller's listener as a failed
        transfer."""
        if caller.key in self.by_caller:
            self._fail(caller, 491, "an attended transfer of this call is already under way")
            return
        c = Consultation(self, caller.key, uri)

        def prepare(call: SipCall) -> None:
            call.listener = c
            c.key = call.key

        try:
            consult = self.stack.dial(caller.trunk, uri, prepare)
        except DialRefusedError as e:
            self._fail(caller, e.status, e.message)
            return
        self.by_caller[caller.key] = c
        event("transfer_consult", call=caller.call_id, target=uri, consult=consult.call_id)

    def refer(self, c: Consultation, consult: SipCall) -> None:
        """The target answered: REFER the caller to it, replacing the consultation."""
        caller = self.stack.calls.get(c.caller_key)
        if caller is None or caller.disconnected or self.by_caller.get(c.caller_key) is not c:
            self.stack.hangup(consult.key)
            return
        try:
            caller.xferReplaces(consult, pj.CallOpParam(True))
        except pj.Error as e:
            self.end(c.caller_key)
            self._fail(caller, 500, f"cannot REFER with Replaces: {e.info()}")
            return
        c.referred = True
        event("transfer_referred", call=caller.call_id, consult=consult.call_id, target=c.target)

    def ended(self, c: Consultation, code: int, reason: str) -> None:
        """The consultation is over: before the REFER it failed (the agent hears why); after it, the target took
        it over (or not: the caller's NOTIFY tells)."""
        if self.by_caller.get(c.caller_key) is c and not c.referred:
            del self.by_caller[c.caller_key]
            caller = self.stack.calls.get(c.caller_key)
            if caller is not None and not caller.disconnected:
                self._fail(caller, code if code >= 300 else 480, f"the target did not take the call: {reason}")

    def end(self, caller_key: int) -> None:
        """The caller's transfer is over (its final NOTIFY) or the caller left: hang the consultation up."""
        c = self.by_caller.pop(caller_key, None)
        if c is not None:
            self.stack.hangup(c.key)

    def tick(self) -> None:
        """Give up on targets that ring too long (pjsua thread, periodic)."""
        now = time.monotonic()
        for c in list(self.by_caller.values()):
            if not c.referred and now - c.started > RING_S:
                self.stack.hangup(c.key, 487)
                self.ended(c, 408, f"no answer within {RING_S:.0f} s")

    def _fail(self, caller: SipCall, code: int, reason: str) -> None:
        if caller.listener is not None:
            caller.listener.on_transfer_status(caller, code, reason)

