"""Requests to a caller behind NAT: in-dialog requests (BYE, re-INVITE, REFER) go where its INVITE came from.

A caller behind NAT writes its private address in Contact; pjsip sends responses back to the INVITE's source
(`received`/`rport`, RFC 3581), but in-dialog requests to the Contact, where they are lost (measured: a BYE from
the gateway never reached the caller of tests/integration/test_nat.py, over UDP or TCP). Kamailio's nathelper
rewrites such a Contact; pjsip has no option for it, but a dialog's route set can be set: a loose Route to the
INVITE's source sends every in-dialog request there, with the caller's Contact still as Request-URI. Over TCP the
Route names `transport=tcp` (over TLS `transport=tls`), and pjsip sends on the connection the INVITE came on (its
transport manager finds an open connection to that address; the NAT lets nothing else in). `nat_route` decides
(pure); `DialogRoutes` sets it through ctypes on the library pjsua2 loaded (pjsip_ua_find_dialog, pjsip_parse_hdr,
pjsip_dlg_set_route_set: pjsua2 does not expose dialogs).

Left alone: callers through a proxy (more than one Via, or a Record-Route), since the proxy's Record-Route already
puts it on the path of every in-dialog request and NAT is its business (Kamailio's nathelper).
"""

from __future__ import annotations

import ctypes
import ipaddress
from email.parser import HeaderParser
from email.policy import compat32

from telephony.sip_uri import parse_sip_uri


def _contact_uri(value: str) -> str:
    value = value.split(",", 1)[0].strip()
    if "<" in value:
        return value[value.index("<") + 1:value.index(">")]
    return value.split(";", 1)[0]  # an addr-spec without <>: what follows ";" are header parameters


def nat_route(message: str, source: str) -> str | None:
    """The Route to the source of INVITE `message` when it came straight from the caller (one Via) and its
    Contact (an IP address) is not where it came from: over UDP another address or port (`<sip:ip:port;lr>`), over
    TCP or TLS another address (`<sip:ip:port;transport=tcp;lr>`, `transport=tls`: a connection's source port is
    never the caller's listening port, NAT or not). Else None."""
    head = message.replace("\r\n", "\n").split("\n\n", 1)[0].partition("\n")[2]
    hdrs = HeaderParser(policy=compat32).parsestr(head, headersonly=True)
    vias = [v.strip() for h in ("Via", "v") for value in hdrs.get_all(h, []) for v in str(value).split(",")]
    contact = str(hdrs.get("Contact") or hdrs.get("m") or "")
    if len(vias) != 1 or not contact or hdrs.get("Record-Route"):
        return None  # through a proxy (more Vias), its source is the proxy's: NAT is the proxy's business
    via = vias[0].upper().split(None, 1)[0]
    if via not in ("SIP/2.0/UDP", "SIP/2.0/TCP", "SIP/2.0/TLS"):
        return None  # another transport (SCTP, WebSocket): left to pjsip
    conn = via.rpartition("/")[2].lower() if via != "SIP/2.0/UDP" else ""
    host, _, port = source.rpartition(":")
    try:
        uri = parse_sip_uri(_contact_uri(contact))
        src = ipaddress.ip_address(host.strip("[]"))
        written = ipaddress.ip_address(uri.host)
    except ValueError:
        return None  # a Contact with a host name, or a malformed one: left to pjsip
    allowed = {"udp", conn or "udp"} | ({"tcp"} if uri.scheme == "sips" else set())  # sips: over TCP is TLS
    if uri.params.get("transport", "udp").lower() not in allowed:
        return None
    if written == src and (conn or (uri.port or 5060) == int(port)):
        return None
    return f"<sip:{host}:{port};transport={conn};lr>" if conn else f"<sip:{host}:{port};lr>"


class _PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t)]


class _ListHead(ctypes.Structure):
    """The head of a `pjsip_route_hdr` list: pjsip reads only its links (`prev`, `next`)."""

    _fields_ = [("prev", ctypes.c_void_p), ("next", ctypes.c_void_p), ("rest", ctypes.c_char * 128)]


class DialogRoutes:
    """Sets dialogs' route sets; pjsua thread only, after libInit."""

    def __init__(self, lib_path: str) -> None:
        lib = ctypes.CDLL(lib_path)
        lib.pjsip_ua_find_dialog.restype = ctypes.c_void_p
        lib.pjsip_ua_find_dialog.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        lib.pjsua_pool_create.restype = ctypes.c_void_p
        lib.pjsua_pool_create.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t]
        lib.pj_pool_release.argtypes = [ctypes.c_void_p]
        lib.pjsip_parse_hdr.restype = ctypes.c_void_p
        lib.pjsip_parse_hdr.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                        ctypes.c_void_p]
        lib.pj_list_insert_before.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.pjsip_dlg_set_route_set.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.pjsip_dlg_dec_lock.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def set_route(self, call_id: str, local_tag: str, remote_tag: str, route: str) -> bool:
        """Make `route` the dialog's route set; False if pjsip has no such dialog or cannot parse the route."""
        ids = [_PjStr(s.encode(), len(s.encode())) for s in (call_id, local_tag, remote_tag)]
        dlg = self.lib.pjsip_ua_find_dialog(*(ctypes.byref(s) for s in ids), 1)  # returned locked
        if not dlg:
            return False
        pool = self.lib.pjsua_pool_create(b"natroute", 512, 512)
        try:
            name, value = b"Route", route.encode()
            buf = ctypes.create_string_buffer(value)
            hdr = self.lib.pjsip_parse_hdr(pool, ctypes.byref(_PjStr(name, len(name))), buf, len(value), None)
            if not hdr:
                return False
            head = _ListHead()
            head.prev = head.next = ctypes.addressof(head)
            self.lib.pj_list_insert_before(ctypes.addressof(head), hdr)
            return int(self.lib.pjsip_dlg_set_route_set(dlg, ctypes.addressof(head))) == 0  # clones into the dialog
        finally:
            self.lib.pj_pool_release(pool)
            self.lib.pjsip_dlg_dec_lock(dlg)
