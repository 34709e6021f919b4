"""Refusing a new call before pjsua does: when every call slot is taken, and while the worker drains.

pjsua answers an INVITE it has no call slot for with 486 itself, before any pjsua2 callback, and answers OPTIONS
with 200 even while the gateway drains. Neither is configurable through pjsua2, so this module registers a small
pjsip module (through ctypes, on the same library pjsua2 loaded) that sees out-of-dialog requests after the
transaction and dialog layers and before pjsua: it answers a new INVITE with the configured reply when the worker
is full or draining, and OPTIONS with 503 while draining, so that a Kamailio front door stops sending calls.
`decide` is the policy, pure; `SipGate` is the glue, used on the pjsua thread only. It also ends a call whose 200 OK
was never ACKed at once (`terminate`): hung up the usual way, pjsip waits for that ACK before its BYE and keeps the
slot for 32 s.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from telephony.logs import event

PRIORITY = 40
"""After the transaction layer (16, which absorbs retransmissions) and the UA layer (32, in-dialog requests),
before pjsua's own modules (64)."""


@dataclass(frozen=True)
class Reply:
    code: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)


def decide(method: str, calls: int, max_calls: int, draining: bool, full_code: int, retry_after_s: int) -> Reply | None:
    """The reply to an out-of-dialog request, or None to let pjsua handle it."""
    unavailable = Reply(503, "draining", {"Retry-After": str(retry_after_s)})
    if method == "OPTIONS":
        return unavailable if draining else None
    if method != "INVITE":
        return None
    if draining:
        return unavailable
    if calls >= max_calls:
        return Reply(full_code, "full", {"Retry-After": str(retry_after_s)} if full_code == 503 else {})
    return None


_TAG = re.compile(r";\s*tag=([^;,\s>]+)", re.I)


def dialog_ids(response: str) -> tuple[str, str, str] | None:
    """Call-ID, local tag (To) and remote tag (From) of a response we sent; None if one is missing."""
    heads: dict[str, str] = {}
    for line in response.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        name, _, value = line.partition(":")
        key = {"i": "call-id", "t": "to", "f": "from"}.get(name.strip().lower(), name.strip().lower())
        heads.setdefault(key, value.strip())
    to, frm = _TAG.search(heads.get("to", "")), _TAG.search(heads.get("from", ""))
    if not heads.get("call-id") or to is None or frm is None:
        return None
    return heads["call-id"], to.group(1), frm.group(1)


class _PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t)]


_ON_RX = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class _Module(ctypes.Structure):
    """`pjsip_module` (pjsip/sip_module.h)."""

    _fields_ = [("prev", ctypes.c_void_p), ("next", ctypes.c_void_p), ("name", _PjStr), ("id", ctypes.c_int),
                ("priority", ctypes.c_int), ("load", ctypes.c_void_p), ("start", ctypes.c_void_p),
                ("stop", ctypes.c_void_p), ("unload", ctypes.c_void_p), ("on_rx_request", _ON_RX),
                ("on_rx_response", ctypes.c_void_p), ("on_tx_request", ctypes.c_void_p),
                ("on_tx_response", ctypes.c_void_p), ("on_tsx_state", ctypes.c_void_p)]


class _HdrList(ctypes.Structure):
    """The head of a `pjsip_hdr` list (only its list links are used)."""

    _fields_ = [("prev", ctypes.c_void_p), ("next", ctypes.c_void_p), ("type", ctypes.c_int), ("name", _PjStr),
                ("sname", _PjStr), ("vptr", ctypes.c_void_p)]


class SipGate:
    """The pjsip module; `install` after libInit, on the pjsua thread, and keep the object alive until libDestroy."""

    def __init__(self, lib_path: str, max_calls: int, draining: Callable[[], bool], full_code: int,
                 retry_after_s: int) -> None:
        self.lib = ctypes.CDLL(lib_path)
        self.lib.pjsip_rx_data_get_info.restype = ctypes.c_char_p
        self.lib.pjsip_rx_data_get_info.argtypes = [ctypes.c_void_p]
        self.lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        self.lib.pjsua_call_get_count.restype = ctypes.c_uint
        self.lib.pjsip_generic_string_hdr_create.restype = ctypes.c_void_p
        self.lib.pjsip_generic_string_hdr_create.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.pj_list_insert_before.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.lib.pjsip_endpt_respond.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                                 ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.pjsip_endpt_register_module.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.lib.pjsip_ua_find_dialog.restype = ctypes.c_void_p
        self.lib.pjsip_ua_find_dialog.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        self.lib.pjsip_dlg_get_inv_session.restype = ctypes.c_void_p
        self.lib.pjsip_dlg_get_inv_session.argtypes = [ctypes.c_void_p]
        self.lib.pjsip_inv_terminate.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self.lib.pjsip_dlg_dec_lock.argtypes = [ctypes.c_void_p]
        self.max_calls = max_calls
        self.draining = draining
        self.full_code = full_code
        self.retry_after_s = retry_after_s
        self.refused = 0
        self._name = b"mod-voicegate-gate"
        self._cb = _ON_RX(self._on_rx_request)
        self._mod = _Module(name=_PjStr(self._name, len(self._name)), id=-1, priority=PRIORITY,
                            on_rx_request=self._cb)
        self._endpt: Any = None

    def terminate(self, call_id: str, local_tag: str, remote_tag: str, code: int) -> bool:
        """End the INVITE session of a dialog at once, without a request on the wire; False if pjsip has no such
        dialog."""
        ids = [s.encode() for s in (call_id, local_tag, remote_tag)]
        strs = [_PjStr(b, len(b)) for b in ids]
        dlg = self.lib.pjsip_ua_find_dialog(*(ctypes.byref(s) for s in strs), 1)  # returned locked
        if not dlg:
            return False
        try:
            inv = self.lib.pjsip_dlg_get_inv_session(dlg)
            if inv:
                self.lib.pjsip_inv_terminate(inv, code, 1)
        finally:
            self.lib.pjsip_dlg_dec_lock(dlg)
        return bool(inv)

    def install(self) -> None:
        self._endpt = self.lib.pjsua_get_pjsip_endpt()
        status = self.lib.pjsip_endpt_register_module(self._endpt, ctypes.byref(self._mod))
        if status != 0:
            raise RuntimeError(f"pjsip_endpt_register_module failed with status {status}")

    def _on_rx_request(self, rdata: int) -> int:
        try:
            info = self.lib.pjsip_rx_data_get_info(rdata) or b""
            parts = info.split()
            method = parts[2].split(b"/")[0].decode("ascii", "replace") if len(parts) > 2 else ""
            calls = int(self.lib.pjsua_call_get_count())
            reply = decide(method, calls, self.max_calls, self.draining(), self.full_code, self.retry_after_s)
            if reply is None:
                return 0
            self._respond(rdata, reply)
            if method == "INVITE":
                self.refused += 1
                # refused before pjsua made a call of it: no Call-ID is at hand ("")
                event("call_refused", call="", code=reply.code, reason=reply.reason, calls=calls,
                      max_calls=self.max_calls)
            return 1
        except Exception as e:  # a raise here would cross into pjsip
            event("sip_callback_error", where="gate", error=repr(e))
            return 0

    def _respond(self, rdata: int, reply: Reply) -> None:
        head: _HdrList | None = None
        if reply.headers:
            head = _HdrList()
            head.prev = head.next = ctypes.addressof(head)
            pool = ctypes.c_void_p.from_address(rdata).value  # rdata->tp_info.pool, the struct's first field
            for name, value in reply.headers.items():
                n, v = name.encode(), value.encode()
                hdr = self.lib.pjsip_generic_string_hdr_create(pool, ctypes.byref(_PjStr(n, len(n))),
                                                               ctypes.byref(_PjStr(v, len(v))))
                self.lib.pj_list_insert_before(ctypes.addressof(head), hdr)
        self.lib.pjsip_endpt_respond(self._endpt, None, rdata, reply.code, None,
                                     ctypes.addressof(head) if head is not None else None, None, None)
