"""Which trunk an inbound call belongs to, and whether its source may send it (sans-IO).

A call belongs to a trunk when it arrives for the trunk's registered contact (pjsua hands it to the trunk's
account) or when it is for one of the trunk's numbers (a `routes` entry other than `*`). Such a call is accepted
only from the trunk's addresses: `allow` and what its registrar and outbound proxy resolve to. Anything else is
refused with 403, so nobody can reach a carrier's numbers by sending INVITEs straight to the gateway.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from telephony.config import TrunkConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Admission:
    trunk: str
    """The trunk the call belongs to, or "" for a call from no trunk."""
    refused: str = ""
    """Why it is refused (403), or "" when it is admitted."""


def source_ip(address: str) -> str:
    """The IP of pjsip's `srcAddress` ("1.2.3.4:5060", "[::1]:5060")."""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


def _inside(ip: str, nets: Sequence[Network]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in n for n in nets)


def admit(trunks: Mapping[str, TrunkConfig], sources: Mapping[str, Sequence[Network]], account_trunk: str,
          called: str, src: str) -> Admission:
    """Decide for one INVITE: `account_trunk` is the trunk whose account pjsua matched ("" for none), `src` the
    address the INVITE came from."""
    ip = source_ip(src)
    claim = account_trunk or next(
        (n for n, t in trunks.items() if any(r.match != "*" and r.matches(called) for r in t.routes)), "")
    if not claim:
        return Admission("")
    if _inside(ip, sources.get(claim, ())):
        return Admission(claim)
    return Admission(claim, f"{ip} is not an address of trunk {claim}")
