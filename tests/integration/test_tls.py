"""SIP over TLS: a call to voicegate's TLS listener from the pjsua2 test caller that verifies the gateway's
certificate, `voicegate simulate` through its impairment relay to that listener, and trunks over TLS that register
only with a registrar whose certificate the config's CA signed.

The certificates come from a throw-away CA made with the openssl CLI; the TLS registrar is Python's `ssl` server
answering REGISTER as RFC 3261 10.3 says (200 OK echoing Via, From, To with a tag, Call-ID, CSeq and the Contact
with its expiry).
"""

from __future__ import annotations

import json
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

from tests.integration.peers import VENV_BIN, Gateway, call, free_port, gateway_config, rtp_range, start_gateway


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path
    other_name_cert: Path
    """Signed by the trusted CA, but for another host name than 127.0.0.1."""
    other_name_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def issue(d: Path, ca: str, name: str, cn: str, san: str) -> tuple[Path, Path]:
    """A certificate the CA `ca` signed for `cn` / `san`: (cert, key)."""
    _openssl("req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}-ca.crt", "-CAkey", f"{ca}-ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d / f"{name}.crt", d / f"{name}.key"


def make_ca(d: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost that it signed: (ca, cert, key)."""
    _openssl("req", "-x509", *EC, "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.crt", "-days", "2",
             "-subj", f"/CN={name} test CA", cwd=d)
    return (d / f"{name}-ca.crt", *issue(d, name, name, "127.0.0.1", "IP:127.0.0.1,DNS:localhost"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    trusted, rogue = make_ca(d, "trusted"), make_ca(d, "rogue")
    return Pki(*trusted, *rogue, *issue(d, "trusted", "elsewhere", "sip.elsewhere.example",
                                        "DNS:sip.elsewhere.example"))


@dataclass
class TlsRegistrar:
    """A SIP registrar on TLS that grants every REGISTER and declines every INVITE (603, after keeping it); counts
    connections and keeps the requests it got."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    """Require a client certificate signed by this CA (mutual TLS)."""
    port: int = 0
    registers: list[str] = field(default_factory=list)
    invites: list[str] = field(default_factory=list)
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
                    head, rest = buf.split(b"\r\n\r\n", 1)
                    m = re.search(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)", head, re.I | re.M)
                    if len(rest) < (size := int(m.group(1)) if m else 0):
                        break  # the body is still on its way
                    buf = rest[size:]
                    tls.sendall(self._answer(head.decode()))

    def _answer(self, head: str) -> bytes:
        lines = head.split("\r\n")
        hdr = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip() for ln in lines[1:] if ":" in ln}
        vias = [ln for ln in lines[1:] if ln.lower().startswith(("via:", "v:"))]
        if lines[0].startswith("INVITE "):
            self.invites.append(head)
            out = ["SIP/2.0 603 Decline", *vias, f"From: {hdr['from']}", f"To: {hdr['to']};tag=tls-uas",
                   f"Call-ID: {hdr['call-id']}", f"CSeq: {hdr['cseq']}", "Content-Length: 0"]
            return ("\r\n".join(out) + "\r\n\r\n").encode()
        if not lines[0].startswith("REGISTER "):
            return b""  # the ACK of the 603
        self.registers.append(head)
        m = re.search(r";expires=(\d+)", hdr["contact"])
        secs = m.group(1) if m else hdr.get("expires", "60")
        contact = hdr["contact"].split(";expires")[0]
        out = ["SIP/2.0 200 OK", *vias, f"From: {hdr['from']}", f"To: {hdr['to']};tag=tls-registrar",
               f"Call-ID: {hdr['call-id']}", f"CSeq: {hdr['cseq']}", f"Contact: {contact};expires={secs}",
               "Content-Length: 0"]
        return ("\r\n".join(out) + "\r\n\r\n").encode()

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class Partner:
    """A registrar that takes only client certificates of its own CA (not the one that signed the gateway's)."""

    registrar: TlsRegistrar
    cert: Path
    """The client certificate its CA issued for voicegate's trunk (CN vg-trunk-partner)."""
    key: Path


@pytest.fixture(scope="module")
def partner(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Partner]:
    d = tmp_path_factory.mktemp("pki-partner")
    ca, _, _ = make_ca(d, "partner")
    cert, key = issue(d, "partner", "client", "vg-trunk-partner", "DNS:vg-trunk-partner")
    registrar = TlsRegistrar(pki.cert, pki.key, client_ca=ca)
    yield Partner(registrar, cert, key)
    registrar.close()


@pytest.fixture(scope="module")
def tls_gw(pki: Pki, partner: Partner, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Gateway, int, TlsRegistrar, TlsRegistrar, TlsRegistrar]]:
    good, rogue = TlsRegistrar(pki.cert, pki.key, client_ca=pki.ca), TlsRegistrar(pki.rogue_cert, pki.rogue_key)
    misnamed = TlsRegistrar(pki.other_name_cert, pki.other_name_key)
    os.environ["VG_TEST_TLS_PW"] = "pw"
    port, tls_port, partner_port = free_port(), free_port(), partner.registrar.port
    cfg = yaml.safe_load(gateway_config(port))
    cfg["records"] = {"sip_trace": True}  # the Contact voicegate answered with, as sent
    cfg["sip"].update(transports=["udp", "tls"], tls={"port": tls_port, "cert_file": str(pki.cert),
                                                       "key_file": str(pki.key), "ca_file": str(pki.ca),
                                                       "require_client_cert": True})
    trunk = {"username": "vg", "password_env": "VG_TEST_TLS_PW", "transport": "tls", "expiry_s": 60}
    cfg["trunks"] = {"good": {**trunk, "registrar": f"sip:127.0.0.1:{good.port}"},
                     "rogue": {**trunk, "registrar": f"sip:127.0.0.1:{rogue.port}"},
                     "misnamed": {**trunk, "registrar": f"sip:127.0.0.1:{misnamed.port}"},
                     "secure": {**trunk, "registrar": f"sips:127.0.0.1:{good.port}", "allowed": [r"\+4930\d+"]},
                     "partner": {**trunk, "username": "vg-own-cert", "registrar": f"sip:127.0.0.1:{partner_port}",
                                 "tls": {"cert_file": str(partner.cert), "key_file": str(partner.key)}},
                     "partner_default": {**trunk, "username": "vg-listener-cert",
                                         "registrar": f"sip:127.0.0.1:{partner_port}"}}
    os.environ["VG_TEST_TLS_CONTROL"] = "tls-control-token"
    cfg["control"] = {"port": free_port(), "token_env": "VG_TEST_TLS_CONTROL", "allow_uris": ["sips:callee@.*"]}
    gw = start_gateway(yaml.safe_dump(cfg), tmp_path_factory.mktemp("gw-tls"), port)
    yield gw, tls_port, good, rogue, misnamed
    assert gw.stop() == 0, "\n".join(gw.lines[-20:])
    for registrar in (good, rogue, misnamed):
        registrar.close()


def answer_contact(end: dict) -> str:
    """The Contact of the 200 OK voicegate sent to the INVITE of a finished call (from its SIP trace)."""
    text = Path(end["sip_trace"]).read_text()
    m = re.search(r"^SIP/2\.0 200 OK\r?\n(?:.+\n)*?(?:Contact|m):[ \t]*(.+?)\r?$", text, re.M | re.I)
    assert m, text[:3000]
    return m.group(1)


def test_a_call_over_mutual_tls_reaches_its_agent(tls_gw, pki: Pki):
    gw, tls_port, *_ = tls_gw
    res = call(f"sip:echo@127.0.0.1:{tls_port};transport=tls", "--tls-ca", str(pki.ca), "--tls-cert",
               str(pki.cert), "--tls-key", str(pki.key), "--duration", "2")
    assert res["status"] == 200 and res["answered"], res
    inc = gw.wait_event("call_incoming", 5, called="echo")
    end = gw.wait_event("call_end", 10, call=inc["call"])
    assert end["agent"] == "echo"
    # a sip: Request-URI keeps its sip: Contact (RFC 3261 12.1.1 asks for sips: only after a sips: one)
    assert answer_contact(end) == f"<sip:voicegate@127.0.0.1:{tls_port};transport=TLS>"


def test_a_sips_call_gets_a_sips_contact_and_its_route(tls_gw, pki: Pki):
    """RFC 3261 12.1.1: the INVITE went to a sips: URI, so the 200's Contact is sips: (the pjsua2 caller, strict
    like any pjsip UA, refuses a sip: one with "480 SIPS Required"); the dialled user still picks the route, and the
    agent's REFER and BYE reach the caller in that dialog."""
    gw, tls_port, *_ = tls_gw
    res = call(f"sips:xfer@127.0.0.1:{tls_port}", "--tls-ca", str(pki.ca), "--tls-cert", str(pki.cert),
               "--tls-key", str(pki.key), "--duration", "15")
    assert res["status"] == 200 and res["answered"], res
    assert res["agent_speech_start_frame"] is not None, res  # the caller heard the agent
    assert res["refer_to"] == ["sip:operator@example.com"] and res["remote_hangup"], res
    inc = gw.wait_event("call_incoming", 5, called="xfer")
    end = gw.wait_event("call_end", 10, call=inc["call"])
    assert end["agent"] == "xfer" and end["reason"] == "transfer_failed", end
    assert answer_contact(end) == f"<sips:voicegate@127.0.0.1:{tls_port};transport=TLS>"


@pytest.mark.parametrize("why", ["caller does not trust the gateway", "caller has no client certificate"])
def test_a_tls_call_fails_unless_both_sides_verify(tls_gw, pki: Pki, why: str):
    gw, tls_port, *_ = tls_gw
    before = len(gw.events("call_incoming"))
    args = (["--tls-ca", str(pki.rogue_ca), "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
            if why.startswith("caller does not") else ["--tls-ca", str(pki.ca)])
    res = call(f"sip:echo@127.0.0.1:{tls_port};transport=tls", *args, "--duration", "1")
    assert not res["answered"] and res["status"] >= 400, res
    assert len(gw.events("call_incoming")) == before


def test_a_tls_trunk_registers_only_with_a_trusted_certificate(tls_gw):
    gw, _, good, rogue, misnamed = tls_gw
    ok = gw.wait_event("trunk_state", 10, trunk="good", state="registered")
    assert ok["code"] == 200 and good.registers and "transport=tls" in good.registers[0].lower()
    assert good.client_subjects[0] == "127.0.0.1"  # voicegate presented its certificate to a registrar asking
    bad = gw.wait_event("trunk_state", 10, trunk="rogue", state="failed")
    assert bad["code"] >= 400 and "certificate" in bad["reason"].lower(), bad
    assert rogue.connections >= 1, "voicegate never tried the rogue registrar"
    assert not rogue.registers, "voicegate sent a REGISTER to a server whose certificate it does not trust"


def test_a_trunk_presents_its_own_client_certificate_where_the_listeners_is_refused(tls_gw, partner: Partner):
    """Mutual TLS per trunk: the partner's registrar takes only certificates of its own CA. The trunk with its own
    `tls` presents the certificate that CA issued (and registers); the trunk without one presents the listener's,
    which the registrar refuses in the handshake."""
    gw, *_ = tls_gw
    gw.wait_event("trunk_state", 10, trunk="partner", state="registered")
    bad = gw.wait_event("trunk_state", 10, trunk="partner_default", state="failed")
    assert bad["code"] >= 400, bad
    reg = partner.registrar
    assert reg.client_subjects and set(reg.client_subjects) == {"vg-trunk-partner"}, reg.client_subjects
    assert reg.connections > len(reg.client_subjects), "the trunk without its own certificate never tried"
    assert reg.registers and all("vg-own-cert@" in r and "vg-listener-cert" not in r for r in reg.registers)


def test_a_tls_trunk_refuses_a_trusted_certificate_for_another_host(tls_gw):
    gw, *_, misnamed = tls_gw
    bad = gw.wait_event("trunk_state", 10, trunk="misnamed", state="failed")
    assert bad["code"] >= 400 and "certificate" in bad["reason"].lower(), bad
    assert misnamed.connections >= 1 and not misnamed.registers


TRANSFER_OVER_TLS = """\
name: the xfer agent over TLS through the impairment relay
steps:
  - wait_speech: {timeout_s: 5}
  - expect_transfer: {to: "sip:operator@*", timeout_s: 10}
  - expect_hangup: {timeout_s: 15}
"""


def simulate_tls(tmp: Path, tls_port: int, *args: str) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    script = tmp / "xfer.yaml"
    script.write_text(TRANSFER_OVER_TLS)
    out = tmp / "report.json"
    r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(script), "--target",
                        f"sip:xfer@127.0.0.1:{tls_port};transport=tls", "--rtp-port", str(rtp_range(100)[0]),
                        "--json", str(out), "--loss", "10", "--seed", "5", *args],
                       capture_output=True, text=True, timeout=90)
    return r, json.loads(out.read_text()) if out.exists() else []


def test_the_impairment_relay_carries_a_call_over_tls_both_ways_and_impairs_its_rtp(tls_gw, pki: Pki,
                                                                                      tmp_path: Path):
    """The relay ends the phone's TLS and opens its own to the gateway (verified by the CA; its client certificate
    presented, since the gateway requires one); the agent's REFER and BYE come back through it."""
    gw, tls_port, *_ = tls_gw
    r, reports = simulate_tls(tmp_path, tls_port, "--tls-ca", str(pki.ca), "--tls-cert", str(pki.cert),
                              "--tls-key", str(pki.key))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    [rep] = reports
    assert rep["passed"] and rep["rtp"]["rx_loss_pct"] > 2, rep["rtp"]
    imp = rep["impairment"]
    assert imp["seed"] == "5:0" and imp["rx_dropped"] and imp["tx_dropped"]
    end = gw.wait_event("call_end", 10, call=rep["call_id"])
    assert end["agent"] == "xfer" and end["reason"] == "transfer_failed", end
    assert end["rtp"]["rx_loss_pct"] > 2, end["rtp"]  # what the relay dropped on the way to the gateway


def test_the_impairment_relay_refuses_a_tls_target_its_ca_did_not_sign(tls_gw, pki: Pki, tmp_path: Path):
    gw, tls_port, *_ = tls_gw
    before = len(gw.events("call_incoming"))
    r, reports = simulate_tls(tmp_path, tls_port, "--tls-ca", str(pki.rogue_ca), "--tls-cert", str(pki.cert),
                              "--tls-key", str(pki.key))
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    [rep] = reports
    assert rep["status"] == 503 and rep["answer_s"] is None
    failed = [s["message"] for s in rep["steps"] if not s["ok"]]
    assert any("certificate verify failed" in m and f"TLS to 127.0.0.1:{tls_port}" in m for m in failed), failed
    assert len(gw.events("call_incoming")) == before


def dial(gw: Gateway, number: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "voicegate"), "dial", number, "--config", str(gw.config), "--agent", "echo",
                           *args], capture_output=True, text=True, timeout=30)


def header(message: str, *names: str) -> str:
    m = re.search(rf"^(?:{'|'.join(names)})[ \t]*:[ \t]*(.+?)\r?$", message, re.M | re.I)
    assert m, message
    return m.group(1)


@pytest.mark.parametrize("how", ["a sips: URI", "a number on a sips: trunk"])
def test_a_call_placed_to_a_sips_target_carries_a_sips_contact(tls_gw, how: str):
    """RFC 3261 8.1.1.8: "If the Request-URI or top Route header field value contains a SIPS URI, the Contact header
    field MUST contain a SIPS URI as well." The far end is the TLS registrar, which declines the call (603)."""
    gw, _, good, *_ = tls_gw
    before = len(good.invites)
    if how == "a sips: URI":
        r = dial(gw, f"sips:callee@127.0.0.1:{good.port}")
    else:
        gw.wait_event("trunk_state", 10, trunk="secure", state="registered")
        r = dial(gw, "+4930555", "--trunk", "secure")
    assert r.returncode == 0, r.stdout + r.stderr
    end = gw.wait_event("call_end", 10, sip_code=603, direction="outbound", call=gw.events("call_outgoing")[-1]["call"])
    [invite] = good.invites[before:]
    assert invite.startswith("INVITE sips:"), invite
    assert header(invite, "Contact", "m").startswith("<sips:"), invite
    assert header(invite, "Call-ID", "i") == end["call"]


@pytest.fixture(scope="module")
def carrier_gw(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, int, Path, Path]]:
    """A gateway whose TLS listener requires no client certificate, with a trunk (calls for 4930100 from
    127.0.0.1) that requires one its own CA signed: (gateway, TLS port, the carrier's client cert, key)."""
    d = tmp_path_factory.mktemp("pki-carrier")
    ca, _, _ = make_ca(d, "carrier")
    cert, key = issue(d, "carrier", "carrier-client", "sbc.carrier.example", "DNS:sbc.carrier.example")
    os.environ["VG_TEST_TLS_PW"] = "pw"
    port, tls_port = free_port(), free_port()
    cfg = yaml.safe_load(gateway_config(port))
    cfg["sip"].update(transports=["udp", "tls"], tls={"port": tls_port, "cert_file": str(pki.cert),
                                                       "key_file": str(pki.key), "ca_file": str(pki.ca)})
    cfg["trunks"] = {"carrier": {
        "registrar": "sip:127.0.0.1:9", "register": False, "username": "vg", "password_env": "VG_TEST_TLS_PW",
        "transport": "tls", "routes": [{"match": "4930100", "agent": "echo"}],
        "tls": {"require_client_cert": True, "ca_file": str(ca)}}}
    gw = start_gateway(yaml.safe_dump(cfg), tmp_path_factory.mktemp("gw-carrier"), port)
    yield gw, tls_port, cert, key
    assert gw.stop() == 0, "\n".join(gw.lines[-20:])


@pytest.mark.parametrize(("called", "cert", "code"), [
    ("4930100", "carrier", 200), ("4930100", "listener CA's", 403), ("4930100", "none", 403), ("echo", "none", 200)])
def test_a_trunk_requiring_client_certificates_admits_only_its_own_ca(carrier_gw, pki: Pki, called: str, cert: str,
                                                                      code: int):
    """Mutual TLS per trunk, inbound: the trunk's calls need a certificate its CA signed (one the listener's CA
    signed is not enough); a call from no trunk needs none, as the listener requires none from everybody."""
    gw, tls_port, carrier_cert, carrier_key = carrier_gw
    given = {"carrier": ["--tls-cert", str(carrier_cert), "--tls-key", str(carrier_key)],
             "listener CA's": ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)], "none": []}[cert]
    before = len(gw.events("call_incoming"))
    res = call(f"sip:{called}@127.0.0.1:{tls_port};transport=tls", "--tls-ca", str(pki.ca), *given,
               "--duration", "1")
    [inc] = gw.events("call_incoming")[before:]
    assert inc["trunk"] == ("carrier" if called != "echo" else ""), inc
    assert res["status"] == code, (res, gw.events("call_refused")[-1:])
    if code == 403:
        refused = gw.wait_event("call_refused", 1, call=inc["call"])
        assert refused["code"] == 403 and "trunk carrier" in refused["reason"], refused
    else:
        assert gw.wait_event("call_end", 10, call=inc["call"])["agent"] == "echo"
