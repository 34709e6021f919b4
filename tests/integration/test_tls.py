"""SIP over TLS: a call to voicegate's TLS listener from the pjsua2 test caller that verifies the gateway's
certificate, and trunks over TLS that register only with a registrar whose certificate the config's CA signed.

The certificates come from a throw-away CA made with the openssl CLI; the TLS registrar is Python's `ssl` server
answering REGISTER as RFC 3261 10.3 says (200 OK echoing Via, From, To with a tag, Call-ID, CSeq and the Contact
with its expiry).
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.integration.peers import Gateway, call, free_port, gateway_config, start_gateway


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def make_ca(d: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost that it signed: (ca, cert, key)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.crt", "-days", "2",
             "-subj", f"/CN={name} test CA", cwd=d)
    _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{name}-ca.crt", "-CAkey", f"{name}-ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d / f"{name}-ca.crt", d / f"{name}.crt", d / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    return Pki(*make_ca(d, "trusted"), *make_ca(d, "rogue"))


@dataclass
class TlsRegistrar:
    """A SIP registrar on TLS that grants every REGISTER; counts connections and keeps the requests it got."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    """Require a client certificate signed by this CA (mutual TLS)."""
    port: int = 0
    registers: list[str] = field(default_factory=list)
    connections: int = 0
    client_subjects: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(self.client_ca)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self.connections += 1
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return
        peer = tls.getpeercert()
        if peer:
            self.client_subjects.append(str(dict(x[0] for x in peer["subject"]).get("commonName")))
        buf = b""
        with tls:
            while True:
                try:
                    data = tls.recv(65536)
                except (ssl.SSLError, OSError):
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)  # REGISTERs carry no body
                    tls.sendall(self._answer(head.decode()))

    def _answer(self, head: str) -> bytes:
        lines = head.split("\r\n")
        if not lines[0].startswith("REGISTER "):
            return b""
        self.registers.append(head)
        hdr = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip() for ln in lines[1:] if ":" in ln}
        vias = [ln for ln in lines[1:] if ln.lower().startswith(("via:", "v:"))]
        m = re.search(r";expires=(\d+)", hdr["contact"])
        secs = m.group(1) if m else hdr.get("expires", "60")
        contact = hdr["contact"].split(";expires")[0]
        out = ["SIP/2.0 200 OK", *vias, f"From: {hdr['from']}", f"To: {hdr['to']};tag=tls-registrar",
               f"Call-ID: {hdr['call-id']}", f"CSeq: {hdr['cseq']}", f"Contact: {contact};expires={secs}",
               "Content-Length: 0"]
        return ("\r\n".join(out) + "\r\n\r\n").encode()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def tls_gw(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, int, TlsRegistrar,
                                                                              TlsRegistrar]]:
    good, rogue = TlsRegistrar(pki.cert, pki.key, client_ca=pki.ca), TlsRegistrar(pki.rogue_cert, pki.rogue_key)
    os.environ["VG_TEST_TLS_PW"] = "pw"
    port, tls_port = free_port(), free_port()
    cfg = yaml.safe_load(gateway_config(port))
    cfg["sip"].update(transports=["udp", "tls"], tls={"port": tls_port, "cert_file": str(pki.cert),
                                                       "key_file": str(pki.key), "ca_file": str(pki.ca),
                                                       "require_client_cert": True})
    trunk = {"username": "vg", "password_env": "VG_TEST_TLS_PW", "transport": "tls", "expiry_s": 60}
    cfg["trunks"] = {"good": {**trunk, "registrar": f"sip:127.0.0.1:{good.port}"},
                     "rogue": {**trunk, "registrar": f"sip:127.0.0.1:{rogue.port}"}}
    gw = start_gateway(yaml.safe_dump(cfg), tmp_path_factory.mktemp("gw-tls"), port)
    yield gw, tls_port, good, rogue
    assert gw.stop() == 0, "\n".join(gw.lines[-20:])
    good.close()
    rogue.close()


def test_a_call_over_mutual_tls_reaches_its_agent(tls_gw, pki: Pki):
    gw, tls_port, _, _ = tls_gw
    res = call(f"sip:echo@127.0.0.1:{tls_port};transport=tls", "--tls-ca", str(pki.ca), "--tls-cert",
               str(pki.cert), "--tls-key", str(pki.key), "--duration", "2")
    assert res["status"] == 200 and res["answered"], res
    inc = gw.wait_event("call_incoming", 5, called="echo")
    assert gw.wait_event("call_end", 10, call=inc["call"])["agent"] == "echo"


@pytest.mark.parametrize("why", ["caller does not trust the gateway", "caller has no client certificate"])
def test_a_tls_call_fails_unless_both_sides_verify(tls_gw, pki: Pki, why: str):
    gw, tls_port, _, _ = tls_gw
    before = len(gw.events("call_incoming"))
    args = (["--tls-ca", str(pki.rogue_ca), "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
            if why.startswith("caller does not") else ["--tls-ca", str(pki.ca)])
    res = call(f"sip:echo@127.0.0.1:{tls_port};transport=tls", *args, "--duration", "1")
    assert not res["answered"] and res["status"] >= 400, res
    assert len(gw.events("call_incoming")) == before


def test_a_tls_trunk_registers_only_with_a_trusted_certificate(tls_gw):
    gw, _, good, rogue = tls_gw
    ok = gw.wait_event("trunk_state", 10, trunk="good", state="registered")
    assert ok["code"] == 200 and good.registers and "transport=tls" in good.registers[0].lower()
    assert good.client_subjects[0] == "127.0.0.1"  # voicegate presented its certificate to a registrar asking
    bad = gw.wait_event("trunk_state", 10, trunk="rogue", state="failed")
    assert bad["code"] >= 400 and "certificate" in bad["reason"].lower(), bad
    assert rogue.connections >= 1, "voicegate never tried the rogue registrar"
    assert not rogue.registers, "voicegate sent a REGISTER to a server whose certificate it does not trust"
