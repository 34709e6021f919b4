"""Which trunk an inbound call belongs to, and whether its source may send it (sans-IO).

A call belongs to a trunk when it arrives for the trunk's registered contact (pjsua hands it to the trunk's
account) or when it is for one of the trunk's numbers (a `routes` entry other than `*`). Such a call is accepted
only from the trunk's addresses: `allow` and what its registrar and outbound proxy resolve to, or, with
`inbound_auth`, from anywhere with the trunk's username and password (digest, telephony/digest.py). Anything else
is refused with 403, so nobody can reach a carrier's numbers by sending INVITEs straight to the gateway.

A call from no trunk (a softphone, a PBX on the LAN) is checked the same way against the top-level `sip.allow`
and `sip.users`: from an allowed address, or with the credentials of one of the users; with neither configured,
any source may call.

Behind the Kamailio front door every INVITE comes from the front door's address; the front door names the
caller's own address in `X-VG-Source` (after removing any the caller sent), and a gateway believes that header
only from the addresses in `sip.front_door`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from telephony.config import SipConfig, TrunkConfig
from telephony.digest import DigestServer, parse_authorization
from telephony.logs import event
from telephony.sip_uri import parse_sip_uri

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Admission:
    trunk: str
    """The trunk the call belongs to, or "" for a call from no trunk."""
    refused: str = ""
    """Why it is refused (403, or 401 with `challenge`), or "" when it is admitted."""
    challenge: str = ""
    """A WWW-Authenticate value: answer 401 with it, so the caller may retry with credentials."""
    authenticated: bool = False
    """Admitted by its digest credentials rather than by its address."""
    user: str = ""
    """The `sip.users` name it authenticated as (calls from no trunk)."""


@dataclass(frozen=True)
class Invite:
    """What digest authentication needs of the INVITE."""

    request_uri: str = ""
    authorization: str = ""


def source_ip(address: str) -> str:
    """The IP of pjsip's `srcAddress` ("1.2.3.4:5060", "[::1]:5060")."""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


SOURCE_HEADER = "X-VG-Source"


def caller_source(src: str, headers: Mapping[str, str], front_door: Sequence[str]) -> str:
    """The address a call comes from: `src` (pjsip's `srcAddress`), or for an INVITE from one of the `front_door`
    networks the caller's address that the front door wrote into `headers` (SOURCE_HEADER)."""
    named = headers.get(SOURCE_HEADER, "").strip()
    if named and _inside(source_ip(src), [ipaddress.ip_network(n, strict=False) for n in front_door]):
        return named
    return src


def _inside(ip: str, nets: Sequence[Network]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in n for n in nets)


def resolve_sources(t: TrunkConfig) -> list[Network]:
    """The networks a trunk's calls may come from: `allow`, plus every address the registrar and the outbound
    proxy resolve to (looked up once, at start)."""
    nets: list[Network] = [ipaddress.ip_network(a, strict=False) for a in t.allow]
    for uri in filter(None, (t.registrar, t.outbound_proxy)):
        host = parse_sip_uri(uri).host
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
        except OSError as e:
            event("trunk_resolve_error", host=host, error=str(e))
            continue
        for info in infos:
            nets.append(ipaddress.ip_network(str(info[4][0])))
    return nets


def inbound_realm(t: TrunkConfig) -> str:
    return t.realm if t.realm != "*" else "voicegate"


def admit(trunks: Mapping[str, TrunkConfig], sources: Mapping[str, Sequence[Network]], account_trunk: str,
          called: str, src: str, invite: Invite = Invite(), now: float = 0.0, secret: bytes = b"",
          sip: SipConfig | None = None) -> Admission:
    """Decide for one INVITE: `account_trunk` is the trunk whose account pjsua matched ("" for none), `src` the
    address the INVITE came from; a trunk with `inbound_auth` challenges other addresses (nonces made with
    `secret`, valid for a minute from `now`). A call from no trunk is checked against `sip` (`allow`, `users`)."""
    ip = source_ip(src)
    claim = account_trunk or next(
        (n for n, t in trunks.items() if any(r.match != "*" and r.matches(called) for r in t.routes)), "")
    if not claim:
        return _admit_local(sip, ip, invite, now, secret)
    if _inside(ip, sources.get(claim, ())):
        return Admission(claim)
    t = trunks.get(claim)
    if t is None or not t.inbound_auth or not secret:
        return Admission(claim, f"{ip} is not an address of trunk {claim}")
    server = DigestServer(inbound_realm(t), secret)
    if not invite.authorization:
        return Admission(claim, f"{ip} sent no credentials for trunk {claim}", server.challenge(now))
    why = server.check(invite.authorization, "INVITE", invite.request_uri, t.username, t.password, now)
    if why == "stale":
        return Admission(claim, f"{ip} sent a stale nonce for trunk {claim}", server.challenge(now))
    if why:
        return Admission(claim, f"{ip} failed digest authentication for trunk {claim}: {why}")
    return Admission(claim, authenticated=True)


def _admit_local(sip: SipConfig | None, ip: str, invite: Invite, now: float, secret: bytes) -> Admission:
    if sip is None or not (sip.allow or sip.users):
        return Admission("")
    if _inside(ip, [ipaddress.ip_network(a, strict=False) for a in sip.allow]):
        return Admission("")
    if not sip.users or not secret:
        return Admission("", f"{ip} is not in sip.allow")
    server = DigestServer(sip.realm, secret)
    if not invite.authorization:
        return Admission("", f"{ip} sent no credentials (sip.users)", server.challenge(now))
    user = parse_authorization(invite.authorization).get("username", "")
    known = sip.users.get(user)
    if known is None:
        return Admission("", f"{ip} failed digest authentication: unknown user {user!r}")
    why = server.check(invite.authorization, "INVITE", invite.request_uri, user, known.password, now)
    if why == "stale":
        return Admission("", f"{ip} sent a stale nonce for user {user}", server.challenge(now))
    if why:
        return Admission("", f"{ip} failed digest authentication as user {user}: {why}")
    return Admission("", authenticated=True, user=user)
