"""Digest authentication of inbound INVITEs (RFC 3261 22.4, RFC 2617 MD5 with or without qop=auth), sans-IO.

pjsua2 authenticates as a client only; it has no server side for calls, and pjsip's `pjsip_auth_srv` is not
exposed to Python. So this module does the server's part with `hashlib` and `hmac`: a nonce that carries its own
time and a MAC (no state to keep, valid for `max_age_s`), and the check of an Authorization header, whose
parameters `urllib.request`'s HTTP list parsers read. Nonce counts are not tracked, so a captured INVITE could be
replayed to the same Request-URI while its nonce is fresh (60 s): where that matters, use TLS.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from urllib.request import parse_http_list, parse_keqv_list

NONCE_KEY_ENV = "VOICEGATE_NONCE_KEY"
"""The supervisor gives its workers one nonce key (hex) in this variable: a challenge one worker sent is answered
through the front door to whichever worker gets the retry."""


def nonce_key() -> bytes:
    """The key of this process's nonces: the supervisor's, else a new random one."""
    given = os.environ.get(NONCE_KEY_ENV, "")
    try:
        key = bytes.fromhex(given)
    except ValueError:
        key = b""
    return key if len(key) >= 16 else os.urandom(32)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def expected_response(username: str, realm: str, password: str, method: str, uri: str, nonce: str,
                      qop: str = "", nc: str = "", cnonce: str = "") -> str:
    """The `response` a client with this password sends (RFC 2617 3.2.2.1, algorithm MD5)."""
    ha1 = _md5(f"{username}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    if qop:
        return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _md5(f"{ha1}:{nonce}:{ha2}")


def parse_authorization(value: str) -> dict[str, str]:
    """The parameters of a `Digest ...` credentials value (empty if it is another scheme)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return {}
    return {k.lower(): v for k, v in parse_keqv_list(parse_http_list(rest)).items()}


@dataclass(frozen=True)
class DigestServer:
    realm: str
    secret: bytes
    max_age_s: float = 60.0

    def challenge(self, now: float) -> str:
        """A WWW-Authenticate value with a fresh nonce."""
        return f'Digest realm="{self.realm}", nonce="{self._nonce(int(now))}", algorithm=MD5, qop="auth"'

    def _nonce(self, t: int) -> str:
        mac = hmac.new(self.secret, f"{t}:{self.realm}".encode(), hashlib.sha256).hexdigest()[:24]
        return f"{t:x}.{mac}"

    def check(self, authorization: str, method: str, request_uri: str, username: str, password: str,
              now: float) -> str:
        """"" when the credentials are right and fresh, else why not ("stale" asks for a new challenge)."""
        p = parse_authorization(authorization)
        if not p:
            return "no digest credentials"
        if p.get("username") != username or p.get("realm") != self.realm:
            return f"unknown user {p.get('username')!r} in realm {p.get('realm')!r}"
        if p.get("algorithm", "MD5").upper() != "MD5" or p.get("qop", "auth") != "auth":
            return "unsupported algorithm or qop"
        nonce = p.get("nonce", "")
        t_hex, _, _ = nonce.partition(".")
        try:
            t = int(t_hex, 16)
        except ValueError:
            return "bad nonce"
        if not hmac.compare_digest(nonce, self._nonce(t)):
            return "bad nonce"
        if not 0 <= now - t <= self.max_age_s:
            return "stale"
        if p.get("uri") != request_uri:
            return "digest uri is not the request URI"
        want = expected_response(username, self.realm, password, method, p["uri"], nonce, p.get("qop", ""),
                                 p.get("nc", ""), p.get("cnonce", ""))
        if not hmac.compare_digest(want, p.get("response", "")):
            return "wrong password"
        return ""
