"""OPTIONS pings from a trunk's account to its registrar (`keepalive_s`): a request the far end answers keeps a NAT
or SBC binding open and tells whether the trunk is reachable between registrations.

pjsua's own keepalive (`udpKaIntervalSec`) is a bare CRLF on UDP that nobody answers, and pjsua2 has no call that
sends an out-of-dialog request; so `OptionsPinger` builds the OPTIONS with pjsua's `pjsua_acc_create_request`
(the account's From and Contact, its proxies as route set) and sends it with `pjsip_endpt_send_request`, through
ctypes on the library pjsua2 loaded, as telephony/admission.py does. `Keepalive` is the policy, sans-IO.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from telephony.logs import event

State = Literal["unknown", "up", "down"]
EXPIRY_GRACE_S = 1.0


@dataclass
class Keepalive:
    """One trunk's pings: when the next is due, and whether the far end answers."""

    trunk: str
    interval_s: float
    state: State = "unknown"
    next_at: float = 0.0
    pending_since: float | None = None
    sent: int = 0
    answered: int = 0
    last_code: int = 0
    rtt_ms: float | None = None

    @property
    def timeout_s(self) -> float:
        """How long a ping may wait for its answer: the interval, at most pjsip's own 32 s (64×T1)."""
        return min(self.interval_s, 32.0)

    def due(self, now: float) -> bool:
        """Whether to send a ping now (one at a time); if so, it counts as sent."""
        if self.pending_since is not None or now < self.next_at:
            return False
        self.pending_since, self.next_at = now, now + self.interval_s
        self.sent += 1
        return True

    def result(self, now: float, code: int, answered: bool) -> list[dict[str, Any]]:
        """The ping's outcome: `answered` when the far end sent a final response (whatever its code, it is alive),
        else pjsip's timeout (408) or transport error (503). An event when the state changes."""
        sent_at = now if self.pending_since is None else self.pending_since
        self.pending_since, self.last_code = None, code
        if answered:
            self.answered += 1
            self.rtt_ms = round((now - sent_at) * 1000, 1)
        state: State = "up" if answered else "down"
        if state == self.state:
            return []
        self.state = state
        return [{"trunk": self.trunk, **self.status()}]

    def expire(self, now: float) -> list[dict[str, Any]]:
        """A ping unanswered `timeout_s` plus `EXPIRY_GRACE_S` after it went is a timeout (408), whether or not
        pjsip's callback comes: for a registrar whose port is closed, pjsip 2.15 never called it (measured)."""
        if self.pending_since is None or now < self.pending_since + self.timeout_s + EXPIRY_GRACE_S:
            return []
        return self.result(now, 408, False)

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "code": self.last_code, "rtt_ms": self.rtt_ms if self.state == "up" else None,
                "sent": self.sent, "answered": self.answered}


class _PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t)]


class _Method(ctypes.Structure):
    """`pjsip_method` (pjsip/sip_msg.h)."""

    _fields_ = [("id", ctypes.c_int), ("name", _PjStr)]


_SENT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
# pjsip_event (pjsip/sip_event.h): list links (2 pointers), `type`, then body.tsx_state: src, tsx, prev_state, type
_EVENT_TYPE, _TSX_SRC, _TSX_CAUSE = 16, 24, 44
_EVENT_TSX_STATE, _EVENT_RX_MSG, _EVENT_TRANSPORT_ERROR = 5, 3, 4
_STATUS = re.compile(rb"msg (\d{3})/")


class OptionsPinger:
    """Sends OPTIONS for pjsua accounts; `on_result(token, code, answered)` runs on the pjsua thread. Create after
    libInit and keep alive until libDestroy (pjsip holds its callback)."""

    def __init__(self, lib_path: str, on_result: Callable[[int, int, bool], None]) -> None:
        lib = ctypes.CDLL(lib_path)
        lib.pjsua_acc_create_request.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                                 ctypes.POINTER(ctypes.c_void_p)]
        lib.pjsip_endpt_send_request.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p,
                                                 _SENT]
        lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        lib.pjsip_rx_data_get_info.restype = ctypes.c_char_p
        lib.pjsip_rx_data_get_info.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self._options = _Method.in_dll(lib, "pjsip_options_method")
        self._on_result = on_result
        self._cb = _SENT(self._sent)

    def send(self, acc_id: int, target: str, token: int, timeout_s: float) -> int:
        """Send an OPTIONS to `target` from account `acc_id`; pjsip's status (0: under way, `on_result` follows).
        `token` (non-zero) names the ping in `on_result`."""
        uri = target.encode()
        tdata = ctypes.c_void_p()
        status = int(self.lib.pjsua_acc_create_request(acc_id, ctypes.byref(self._options),
                                                       ctypes.byref(_PjStr(uri, len(uri))), ctypes.byref(tdata)))
        if status != 0:
            return status
        return int(self.lib.pjsip_endpt_send_request(self.lib.pjsua_get_pjsip_endpt(), tdata,
                                                     int(timeout_s * 1000), ctypes.c_void_p(token), self._cb))

    def _sent(self, token: int | None, ev: int | None) -> None:
        try:
            code, answered = 408, False
            if ev and ctypes.c_int.from_address(ev + _EVENT_TYPE).value == _EVENT_TSX_STATE:
                cause = ctypes.c_int.from_address(ev + _TSX_CAUSE).value
                if cause == _EVENT_RX_MSG:
                    info = self.lib.pjsip_rx_data_get_info(ctypes.c_void_p.from_address(ev + _TSX_SRC).value) or b""
                    m = _STATUS.search(info)
                    code, answered = (int(m.group(1)), True) if m else (408, False)
                elif cause == _EVENT_TRANSPORT_ERROR:
                    code = 503
            self._on_result(int(token or 0), code, answered)
        except Exception as e:  # a raise here would cross into pjsip
            event("sip_callback_error", where="keepalive", error=repr(e))
