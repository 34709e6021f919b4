"""Trunks with their own TLS client certificate: one pjsua TLS transport per certificate.

pjsua keeps one TLS configuration (certificate, key, CA list, verification) per transport, and a connection an
account opens goes through the factory of the transport the account is bound to (`AccountSipConfig.transportId`,
a listener selector). So a trunk whose `tls` names its own certificate gets a TLS transport of its own, listening on
an ephemeral port of `sip.listen`, and its accounts are bound to it; trunks that name the same files share one.
The other TLS trunks are bound to the TLS listener: pjsip reuses an open connection to the same address for an
account bound to no transport, so such a trunk could otherwise send its requests over another trunk's connection,
with that trunk's certificate (seen in tests/integration/test_tls.py). Transports stay until the process ends (a
reload that drops a trunk leaves its transport unused). pjsua thread only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pjsua2 as pj

from telephony.config import SipConfig, TrunkConfig, TrunkTlsConfig
from telephony.errors import SipStartError


def fill_tls(t: Any, cert: str, key: str, ca: str | None, verify_server: bool) -> None:
    """Fill a pjsua `TlsConfig` with a certificate, its key, an optional CA list and server verification."""
    t.certFile = str(Path(cert).expanduser())
    t.privKeyFile = str(Path(key).expanduser())
    if ca:
        t.CaListFile = str(Path(ca).expanduser())
    t.verifyServer = verify_server


class TrunkTransports:
    def __init__(self, ep: Any, sip: SipConfig, listener: int | None) -> None:
        self._ep = ep
        self._sip = sip
        self._listener = listener
        """The TLS listener's transport id (none without `tls` in `sip.transports`)."""
        self._ids: dict[TrunkTlsConfig, int] = {}

    def transport_for(self, name: str, trunk: TrunkConfig) -> int | None:
        """The transport a trunk's accounts are bound to: for TLS, the one presenting its own certificate (made on
        first use) or the listener; none for UDP and TCP."""
        if trunk.transport != "tls":
            return None
        if trunk.tls is None or trunk.tls.cert_file is None:
            return self._listener
        return self._own(name, trunk.tls)

    def _own(self, trunk: str, tls: TrunkTlsConfig) -> int:
        if tls in self._ids:
            return self._ids[tls]
        tc = pj.TransportConfig()
        tc.port = 0
        tc.boundAddress = self._sip.listen
        if self._sip.public_address:
            tc.publicAddress = self._sip.public_address
        assert tls.cert_file is not None and tls.key_file is not None  # transport_for asks only then
        ca = tls.ca_file or (self._sip.tls.ca_file if self._sip.tls is not None else None)
        fill_tls(tc.tlsConfig, tls.cert_file, tls.key_file, ca, tls.verify_server)
        try:
            tid = int(self._ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tc))
        except pj.Error as e:
            raise SipStartError(f"trunk {trunk}: cannot make a TLS transport with cert_file {tls.cert_file}: "
                                f"{e.info()}") from None
        self._ids[tls] = tid
        return tid
