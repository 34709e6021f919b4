"""SIP URIs as trunk configs use them: `sip:[user@]host[:port][;params]` (RFC 3261 19.1).

Written by hand because pjsua2 exposes no URI parser to Python and the SIP packages on PyPI are whole stacks; this
checks only what a config needs (scheme, host, port, a `transport` parameter) so that `voicegate check` can name a
bad URI before pjsua would reject it at start-up.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_URI = re.compile(
    r"^(?P<scheme>sips?):(?:(?P<user>[^@;:]+)(?::[^@]*)?@)?"
    r"(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?(?P<params>(?:;[^;?]+)*)$"
)
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class SipUri:
    scheme: str
    user: str
    host: str
    """Without brackets for IPv6."""
    port: int | None
    params: dict[str, str]

    @property
    def transport(self) -> str:
        return self.params.get("transport", "tls" if self.scheme == "sips" else "udp").lower()


def parse_sip_uri(text: str) -> SipUri:
    """Parse `text`; raise ValueError saying what is wrong with it."""
    m = _URI.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a SIP URI (expected sip:host[:port][;params])")
    host = m["host"]
    if host.startswith("["):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    elif not all(_LABEL.match(part) for part in host.rstrip(".").split(".")):
        raise ValueError(f"{text!r}: {host!r} is not a host name or IP address")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range")
    params: dict[str, str] = {}
    for p in filter(None, m["params"].split(";")):
        k, _, v = p.partition("=")
        params[k.lower()] = v
    return SipUri(m["scheme"], m["user"] or "", host, port, params)
