"""pjsua2 `Call` objects outlive their pjsua call id: when such an object may be used, and when it may go.

A pjsua2 `Call` keeps its pjsua call id after its call ended (pjsua2 2.15.1), and its destructor clears the user data
of that id and hangs up any call active there. pjsua frees the id once the INVITE session is over (after the BYE's
answer when we hung up, though `hangup()` reports DISCONNECTED at once) and gives it to the next call, incoming or
outgoing, often within the same `libHandleEvents`. An object destroyed, or hung up, after that reuse hit the new
call: it sent a CANCEL or BYE for it and cut it off from its callbacks, so the application never saw it answered or
ended (the soak's call that "stayed at 180 Ringing" in the simulator while the gateway answered it; gateway calls
that waited for an ACK for minutes, holding a call slot). No pjsua2 API resets the id or tells when pjsua freed it,
so `Graveyard` keeps ended calls and lets each go only while its id is free or still its own, and `owns` tells
whether an object may act on its id. Both run on the pjsua thread, between polls.
"""

from __future__ import annotations

from typing import Any

import pjsua2 as pj


def owns(call: Any) -> bool:
    """The call's pjsua call id is still this object's: pjsua has not freed it nor given it to a later call."""
    cid = int(call.getId())
    return cid >= 0 and pj.Call.lookup(cid) is call


def harmless(call: Any) -> bool:
    """Destroying the object now touches no other call: it has no id, its id is free, or the id is still its own."""
    return int(call.getId()) < 0 or not call.isActive() or owns(call)


class Graveyard:
    """Ended pjsua2 Call objects, each destroyed (its last reference dropped) once that is harmless. The caller must
    hold no other reference to a call it buries, and `clear()` it before libDestroy."""

    def __init__(self) -> None:
        self._calls: list[Any] = []

    def bury(self, call: Any) -> None:
        if all(c is not call for c in self._calls):
            self._calls.append(call)

    def sweep(self) -> None:
        """Let go of the calls whose destructor is harmless now; the others wait until their id's call is over."""
        self._calls = [c for c in self._calls if not harmless(c)]

    def clear(self) -> None:
        self._calls.clear()

    def __len__(self) -> int:
        return len(self._calls)
