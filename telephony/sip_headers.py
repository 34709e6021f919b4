"""The SIP headers of an inbound INVITE that an agent may care about: who the network asserts the caller is
(P-Asserted-Identity, Privacy), where the call was diverted from (Diversion, History-Info), the carrier's or PBX's
X- headers and User-to-User.

pjsua2 gives Python the raw message only; its header block has RFC 5322's shape (name, colon, value, folded
lines), so the standard library's `email` header parser reads it.
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

KNOWN = ("P-Asserted-Identity", "P-Preferred-Identity", "Privacy", "Diversion", "History-Info", "User-to-User",
         "Remote-Party-ID")
_CANONICAL = {h.lower(): h for h in KNOWN}
_ENTRY_USER = re.compile(r"<?(?:sips?|tel):([^@;>?,]+)")


def _headers(message: str) -> tuple[str, Message]:
    head = message.replace("\r\n", "\n").split("\n\n", 1)[0]
    start, _, fields = head.partition("\n")
    return start, HeaderParser(policy=compat32).parsestr(fields, headersonly=True)


def request_parts(message: str) -> tuple[str, str]:
    """The Request-URI and the Authorization header ("" if none) of a SIP request."""
    start, msg = _headers(message)
    parts = start.split()
    return (parts[1] if len(parts) == 3 else ""), " ".join(str(msg.get("Authorization", "")).split())


def first_header(message: str, *names: str) -> str:
    """The value of the first header the message carries under any of `names` (a header and its compact form,
    e.g. "Contact", "m"); "" if none."""
    _start, msg = _headers(message)
    wanted = {n.lower() for n in names}
    return next((" ".join(str(v).split()) for k, v in msg.items() if k.lower() in wanted), "")


def call_metadata(message: str) -> dict[str, str]:
    """The agent-relevant headers of a SIP request, by their usual spelling (X- headers as sent); a header sent
    several times is joined with ", " in order, as RFC 3261 7.3.1 allows."""
    _start, msg = _headers(message)
    out: dict[str, str] = {}
    for name, value in msg.items():
        key = _CANONICAL.get(name.lower()) or (name if name.lower().startswith("x-") else None)
        if key is None:
            continue
        value = " ".join(str(value).split())
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def original_called(headers: dict[str, str]) -> str:
    """The number first dialled, before any diversion: the first History-Info entry (RFC 7044 lists the
    original request first), else the last Diversion entry (RFC 5806 adds the newest on top); "" if neither."""
    if "History-Info" in headers:
        m = _ENTRY_USER.search(headers["History-Info"])
        return m.group(1) if m else ""
    if "Diversion" in headers:
        users = _ENTRY_USER.findall(headers["Diversion"])
        return str(users[-1]) if users else ""
    return ""
