"""TLS for the impairment relay's SIP proxy (impair.py): what the phone is told to trust, and the two contexts.

The proxy ends the simulated phone's TLS with a throw-away certificate for 127.0.0.1 (made with `cryptography`
when the phone starts; the phone trusts it and nothing else does) and opens its own TLS to the target with Python's
`ssl`, checking the target's certificate and name against `ca_file`, or nothing with `insecure` (labs only), and
presenting `cert_file` when the target asks for a client certificate.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import re
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class TlsOptionsError(Exception):
    """TLS options that cannot work together or files that cannot be read: names the option."""


@dataclass(frozen=True)
class TlsOptions:
    """How the simulator reaches a TLS target (`sips:` or `;transport=tls`)."""

    ca_file: str | None = None
    """PEM file of the CA certificates that may sign the target's certificate."""
    cert_file: str | None = None
    """Client certificate (PEM) for a target that asks for one; needs `key_file`."""
    key_file: str | None = None
    insecure: bool = False
    """Accept any certificate from the target (a lab without a CA)."""

    def check(self) -> None:
        if self.insecure and self.ca_file:
            raise TlsOptionsError("--insecure and --tls-ca exclude each other")
        if bool(self.cert_file) != bool(self.key_file):
            raise TlsOptionsError("--tls-cert and --tls-key go together")
        for option, path in (("--tls-ca", self.ca_file), ("--tls-cert", self.cert_file),
                             ("--tls-key", self.key_file)):
            if path and not Path(path).is_file():
                raise TlsOptionsError(f"{option} {path}: no such file")
        try:
            self.client_context()
        except (ssl.SSLError, OSError) as e:
            raise TlsOptionsError(f"TLS options: {e}") from None

    def client_context(self) -> ssl.SSLContext:
        """The context of the proxy's connections to the target."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def is_tls(uri: str) -> bool:
    """A `sips:` URI or one with `;transport=tls`."""
    value = uri.strip().removeprefix("<").lower()
    return value.startswith("sips:") or re.search(r";transport=tls\b", value) is not None


@dataclass(frozen=True)
class ProxyCert:
    """The proxy's throw-away certificate and key (PEM files in `folder`, removed with it)."""

    folder: tempfile.TemporaryDirectory[str]
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def trust_bundle(self, ca_file: str | None) -> Path:
        """A PEM file with this certificate and `ca_file`'s: what the phone trusts (the proxy, and the target
        when it calls it directly)."""
        out = self.cert.with_name("trust.pem")
        extra = Path(ca_file).read_text() if ca_file else ""
        out.write_text(self.cert.read_text() + extra)
        return out


def proxy_cert(host: str = "127.0.0.1", days: int = 2) -> ProxyCert:
    """A self-signed P-256 certificate for `host` (an IP address), valid from an hour ago for `days`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tempfile.TemporaryDirectory(prefix="vg-relay-tls-")
    cert_path, key_path = Path(folder.name) / "relay.crt", Path(folder.name) / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ProxyCert(folder, cert_path, key_path)


class Stream:
    """A TCP or TLS connection that one thread reads and any thread may write to. An SSL object must not be used
    by two threads at once, so reads and writes take turns on a lock (a read waits at most 50 ms for data)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(0.05)
        self.sock = sock
        self.local: tuple[str, int] = sock.getsockname()[:2]
        self._lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._lock:
            self.sock.sendall(data)

    def recv(self) -> bytes | None:
        """What arrived (b'': the peer closed), or None when nothing came within 50 ms."""
        with self._lock:
            try:
                return self.sock.recv(65535)
            except TimeoutError:
                return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
