"""TLS in the impairment relay's proxy, on loopback: the phone's TLS ends at the proxy, the proxy's own TLS reaches
a target whose certificate the options' CA signed, and the target's in-dialog requests come back on that connection
(the proxy record-routes with its local end of it)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from telephony.simulator.impair import SdpProxy, framed, refuse
from telephony.simulator.relay_tls import ProxyCert, TlsOptions, TlsOptionsError, is_tls, proxy_cert


def message(first: str, *headers: str) -> bytes:
    return ("\r\n".join([first, *headers, "Content-Length: 0"]) + "\r\n\r\n").encode()


def read_one(sock: ssl.SSLSocket) -> str:
    buffer = b""
    while not (got := framed(buffer))[0]:
        buffer += sock.recv(65535)
    return got[0][0].decode()


@pytest.fixture
def far() -> Iterator[tuple[ProxyCert, socket.socket]]:
    """A TLS target's certificate (self-signed, so it is its own CA) and its listening socket."""
    cert = proxy_cert()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    yield cert, listener
    listener.close()
    cert.folder.cleanup()


def test_a_tls_call_goes_through_and_the_far_ends_request_comes_back_on_the_same_connection(far):
    cert, listener = far
    port = listener.getsockname()[1]
    proxy = SdpProxy(tls=TlsOptions(ca_file=str(cert.cert)))
    assert proxy.cert is not None and proxy.tls_addr is not None
    phone_ctx = ssl.create_default_context(cafile=str(proxy.cert.cert))
    try:
        with phone_ctx.wrap_socket(socket.create_connection(proxy.tls_addr, timeout=5),
                                   server_hostname="127.0.0.1") as phone:
            phone.settimeout(5)
            me = phone.getsockname()[1]
            tls_here = f"{proxy.tls_addr[0]}:{proxy.tls_addr[1]}"
            phone.sendall(message(f"INVITE sip:100@127.0.0.1:{port};transport=tls SIP/2.0",
                                  f"Via: SIP/2.0/TLS 127.0.0.1:{me};branch=z9hG4bKa", "Max-Forwards: 70",
                                  "To: <sip:100@127.0.0.1>", "From: <sip:caller@127.0.0.1>;tag=p", "Call-ID: tls1",
                                  "CSeq: 1 INVITE", f"Route: <sips:{tls_here};lr>"))
            raw, peer = listener.accept()
            with cert.server_context().wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(5)
                invite = read_one(conn)
                assert invite.split("\r\n")[1] == (f"Record-Route: <sips:127.0.0.1:{peer[1]};lr>, "
                                                   f"<sips:{tls_here};lr>")
                assert f"Via: SIP/2.0/TLS {tls_here};branch=" in invite and "\r\nRoute:" not in invite
                # the far end's BYE, to the phone's Contact along the route set, with a Via no one listens on
                conn.sendall(message("BYE sip:caller@127.0.0.1:1;transport=tls SIP/2.0",
                                     "Via: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKfar", "Max-Forwards: 70",
                                     f"Route: <sips:127.0.0.1:{peer[1]};lr>, <sips:{tls_here};lr>", "Call-ID: tls1",
                                     "CSeq: 2 BYE"))
                bye = read_one(phone)
                assert bye.startswith("BYE ") and "\r\nRoute:" not in bye
                vias = [ln.split(":", 1)[1].strip() for ln in bye.split("\r\n") if ln.startswith("Via:")]
                phone.sendall(message("SIP/2.0 200 OK", *(f"Via: {v}" for v in vias), "Call-ID: tls1",
                                      "CSeq: 2 BYE"))
                ok = read_one(conn)
                assert ok.startswith("SIP/2.0 200 OK") and tls_here not in ok
                assert "\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKfar\r\n" in ok  # on the connection it came on
    finally:
        proxy.close()
    assert proxy.errors == []


def test_a_target_the_ca_did_not_sign_gets_the_phone_a_503_that_says_so(far):
    cert, listener = far
    port = listener.getsockname()[1]
    other = proxy_cert()
    proxy = SdpProxy(tls=TlsOptions(ca_file=str(other.cert)))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
            phone.bind(("127.0.0.1", 0))
            phone.settimeout(5)
            phone.sendto(message(f"OPTIONS sip:100@127.0.0.1:{port};transport=tls SIP/2.0",
                                 f"Via: SIP/2.0/UDP 127.0.0.1:{phone.getsockname()[1]};branch=z9hG4bKb",
                                 "To: <sip:100@127.0.0.1>", "Call-ID: tls2", "CSeq: 1 OPTIONS"), proxy.addr)
            raw, _ = listener.accept()
            with pytest.raises((ssl.SSLError, OSError)):
                cert.server_context().wrap_socket(raw, server_side=True)
            reply = phone.recv(4096).decode()
        assert reply.startswith(f"SIP/2.0 503 impairment relay: TLS to 127.0.0.1:{port} failed: certificate verify "
                                "failed (self-signed certificate)"), reply
        assert "To: <sip:100@127.0.0.1>;tag=impairment-relay" in reply and "Call-ID: tls2" in reply
    finally:
        proxy.close()
        other.folder.cleanup()


def test_refuse_answers_requests_only():
    req = message("INVITE sip:x@h SIP/2.0", "Via: SIP/2.0/UDP h:1;branch=z9hG4bKc", "From: <sip:a@h>;tag=1",
                  "To: <sip:x@h>;tag=2", "Call-ID: c", "CSeq: 1 INVITE", "Max-Forwards: 70").decode()
    out = refuse(req, "no\r\nway")
    assert out is not None
    lines = out.decode().split("\r\n")
    assert lines[0] == "SIP/2.0 503 impairment relay: no way"
    assert "To: <sip:x@h>;tag=2" in lines and "Max-Forwards: 70" not in lines
    assert refuse("SIP/2.0 200 OK\r\n\r\n", "x") is None and refuse("ACK sip:x@h SIP/2.0\r\n\r\n", "x") is None


def test_tls_options_name_what_is_wrong(tmp_path: Path):
    assert is_tls("sips:a@b") and is_tls("<sip:a@b:5061;transport=TLS>") and not is_tls("sip:a@b;transport=tcp")
    with pytest.raises(TlsOptionsError, match="--insecure and --tls-ca exclude each other"):
        TlsOptions(ca_file="x", insecure=True).check()
    with pytest.raises(TlsOptionsError, match="--tls-cert and --tls-key go together"):
        TlsOptions(cert_file="x").check()
    with pytest.raises(TlsOptionsError, match=f"--tls-ca {tmp_path}/none.pem: no such file"):
        TlsOptions(ca_file=str(tmp_path / "none.pem")).check()
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TlsOptionsError, match="TLS options"):
        TlsOptions(ca_file=str(tmp_path / "junk.pem")).check()
    ctx = TlsOptions(insecure=True).client_context()
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
