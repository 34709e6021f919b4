"""The front door's TLS client profiles for trunks with their own certificate (`trunks.NAME.tls`).

Behind the front door Kamailio holds the TLS connections to the carriers, so it, not the worker, must present a
trunk's certificate to that trunk's servers. Kamailio's `tls` module selects the client profile of a connection it
opens by a server id that the routing script puts in an XAVP (`xavp_cfg`, the way its docs recommend; a
`[client:IP:PORT]` profile for the carrier's address was not selected in a test here with Kamailio 5.6.3, and the
connection presented no certificate). So each trunk with its own certificate gets one profile, and a script route
gives a request the trunk's server id when its next hop is the trunk's registrar or outbound proxy as the worker
names them (calls out go to the registrar's host or through the proxy), before any DNS lookup.
Kamailio keeps one connection per server address, so two trunks that reach one server with different certificates
cannot each have their own: `problem` names them, and the config is refused (telephony/workers.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from telephony.sip_uri import parse_sip_uri

if TYPE_CHECKING:
    from telephony.config import TrunkConfig, TrunkTlsConfig

TLS_PORT = 5061
"""A TLS server's port when its URI names none (RFC 3263, without SRV records)."""
XAVP = "tls"
"""The XAVP whose `server_id` selects a client profile (the `tls` module's `xavp_cfg`)."""
ROUTE = "TRUNK_TLS"
"""The script route that names the profile of a request's next hop."""


def _servers(t: TrunkConfig) -> list[tuple[str, int | None]]:
    """Host (lower case, IPv6 in brackets as in a URI) and port (None: not given) of the trunk's registrar and
    outbound proxy."""
    uris = [parse_sip_uri(u) for u in (t.registrar, t.outbound_proxy) if u]
    return [(f"[{u.host}]" if ":" in u.host else u.host.lower(), u.port) for u in uris]


def _own(trunks: Mapping[str, TrunkConfig]) -> dict[str, TrunkTlsConfig]:
    return {n: t.tls for n, t in trunks.items()
            if t.transport == "tls" and t.tls is not None and t.tls.cert_file is not None}


def server_id(trunk: str) -> str:
    return f"vg-trunk-{trunk}"


def problem(trunks: Mapping[str, TrunkConfig]) -> str:
    """Why the front door cannot present each TLS trunk's own certificate to its servers ("" when it can)."""
    holder: dict[tuple[str, int], tuple[str, TrunkTlsConfig | None]] = {}
    for name, t in trunks.items():
        if t.tls is not None and t.tls.require_client_cert:
            return (f"trunks.{name}.tls.require_client_cert: not supported behind the front door yet (TLS ends at "
                    "Kamailio, which does not tell the workers the caller's certificate)")
        if t.transport != "tls":
            continue
        for host, port in _servers(t):
            other, tls = holder.setdefault((host, port or TLS_PORT), (name, t.tls))
            if tls != t.tls:
                return (f"trunks.{name}.tls: trunk {other} reaches {host}:{port or TLS_PORT} too, with another "
                        "client certificate; the front door keeps one TLS connection per server")
    return ""


def client_profiles(trunks: Mapping[str, TrunkConfig], default_ca: str) -> str:
    """tls.cfg sections, one per TLS trunk with its own certificate, selected by its server id; `default_ca`
    verifies the servers of a trunk without `ca_file`."""
    yes = {True: "yes", False: "no"}
    out = ""
    for name, tls in _own(trunks).items():
        ca = str(Path(tls.ca_file).expanduser()) if tls.ca_file else default_ca
        assert tls.cert_file is not None and tls.key_file is not None  # _own keeps only those
        out += (f"\n[client:any]\nserver_name = {server_id(name)}.invalid\nserver_id = {server_id(name)}\n"
                f"method = TLSv1.2+\ncertificate = {Path(tls.cert_file).expanduser()}\n"
                f"private_key = {Path(tls.key_file).expanduser()}\nca_list = {ca}\n"
                f"verify_certificate = {yes[tls.verify_server]}\nrequire_certificate = {yes[tls.verify_server]}\n")
    return out  # server_name: Kamailio wants one on each `any` profile; .invalid, so that no SNI matches it


def route(trunks: Mapping[str, TrunkConfig]) -> str:
    """The script route that gives a request the server id of the trunk whose server its next hop is ($du, else
    the Request-URI); "" when no trunk has its own certificate."""
    lines = []
    for name in _own(trunks):
        for host, port in _servers(trunks[name]):
            lines.append(f'    if ($var(host) == "{host}" && $var(port) == "{port or ""}") '
                         f'{{ $xavp({XAVP}=>server_id) = "{server_id(name)}"; }}')
    if not lines:
        return ""
    return "\n".join([
        f"route[{ROUTE}] {{",
        "    if ($du != $null) { $var(hop) = $du; } else { $var(hop) = $ru; }",
        "    $var(host) = $(var(hop){uri.host}{s.tolower});",
        "    $var(port) = $(var(hop){uri.port});",
        *lines, "}", ""])
