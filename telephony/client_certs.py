"""Mutual TLS per trunk, inbound: the client certificate each TLS connection presented, and whether a trunk's CA
signed it.

pjsua verifies a client certificate against the listener's one CA list, and only either requires one from every
client or from none. A trunk with `tls.require_client_cert` has its own CA, so the listener asks every client for a
certificate but requires none (pjsip's OpenSSL backend asks whenever it is a server), pjsua reports each
connection's peer certificate (`Endpoint.onTransportState`, `TlsInfo.remoteCertInfo.raw`), and admission checks the
certificate of the connection an INVITE came over against the trunk's `ca_file` with OpenSSL's own chain check
(pyOpenSSL's `X509StoreContext`), the same check pjsip would make. Only the bookkeeping is ours.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.x509.oid import NameOID
from OpenSSL import crypto

from telephony.config import TrunkTlsConfig


class TlsPeers:
    """The peer certificates (PEM, "" for none) of the open TLS connections, by the remote address pjsip gives an
    INVITE's `srcAddress`; pjsua thread only."""

    def __init__(self) -> None:
        self._certs: dict[str, str] = {}
        self._addrs: dict[int, str] = {}

    def connected(self, handle: int, remote: str, pem: str) -> None:
        self._addrs[handle] = remote
        self._certs[remote] = pem

    def disconnected(self, handle: int) -> None:
        remote = self._addrs.pop(handle, None)
        if remote is not None:
            self._certs.pop(remote, None)

    def cert_of(self, remote: str) -> str | None:
        """The certificate of the TLS connection from `remote`; None when no TLS connection comes from there."""
        return self._certs.get(remote)


def client_cert_problem(trunk: str, tls: TrunkTlsConfig, over_tls: bool, pem: str | None) -> str:
    """Why a call of `trunk` lacks the client certificate the trunk requires ("" when it has one, or when the
    trunk requires none). `over_tls`: the INVITE's top Via says TLS; `pem`: its connection's certificate."""
    if not tls.require_client_cert:
        return ""
    if not over_tls or pem is None:
        return f"trunk {trunk} requires TLS with a client certificate; the call came without TLS"
    if not pem:
        return f"trunk {trunk} requires a client certificate; the TLS connection presented none"
    assert tls.ca_file is not None  # the config requires it with require_client_cert
    store = crypto.X509Store()
    try:
        store.load_locations(str(Path(tls.ca_file).expanduser()))
        leaf = crypto.load_certificate(crypto.FILETYPE_PEM, pem.encode())
    except crypto.Error as e:
        return f"trunk {trunk}: cannot check the client certificate against ca_file {tls.ca_file}: {e}"
    name = leaf.to_cryptography().subject
    cn = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    subject = str(cn[0].value) if cn else name.rfc4514_string()
    try:
        crypto.X509StoreContext(store, leaf).verify_certificate()
    except crypto.X509StoreContextError as e:
        return f"trunk {trunk}: client certificate {subject!r} does not verify against its ca_file: {e}"
    return ""
