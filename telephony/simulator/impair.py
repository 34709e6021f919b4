"""Seeded RTP impairment: the phone's calls go through a small SIP proxy that puts a UDP relay into each call's
media path, and the relay drops, delays and reorders packets reproducibly (shaper.py decides, from the seed).

pjmedia's own drop simulation (`txDropPct`/`rxDropPct`) draws from one process-wide `rand()` shared by its media
threads, so the same seed would not give the same drops; netem cannot be seeded either. The relay decides each
packet's fate from generators seeded with `{seed}:{direction}` by its place in that direction's packet order, so a
seed always drops (and delays) the same packets.

Why a proxy: both ends must send their RTP to the relay from the first packet, or pjmedia's address latching
(a stream switches its destination to wherever its RTP comes from) takes the relay out of the path again. Only a
party on the signalling path can show each end the relay's address in the other's SDP. The proxy is the phone's
outbound proxy on loopback: it forwards every request to its next hop (Route, else the Request-URI) with its own
Via on top, hands responses back, and rewrites the `c=`/`m=` lines of the SDP it carries (RTCP, the next port, is
relayed unimpaired). Over UDP and TCP it adds no Record-Route, so in-dialog requests of the far end go to the
phone directly; a far end that moves its media in a re-INVITE leaves the relay. The phone reaches the proxy over
UDP; the proxy reaches a next hop whose URI says `;transport=tcp` over TCP (one connection per hop, whose responses
come back on it), others over UDP. A `sips:` or `;transport=tls` target (with `TlsOptions`, relay_tls.py): the phone
reaches the proxy over TLS (the proxy's throw-away certificate), the proxy opens TLS to the target (verified against
the options' CA, or not with `insecure`), and record-routes twice (RFC 3261 16.6; towards the target with the local
address of its connection there, which pjsip matches to that connection, so the far end's in-dialog requests come
back on it: nobody but the phone trusts the proxy's certificate); a target it cannot reach gets the phone a 503
that says why. Written by hand: no maintained Python library is a SIP proxy with SDP rewriting (and none relays RTP
with seeded impairment); this one needs only the few header lines it touches, and RFC 3261's Content-Length framing
on streams.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from telephony.simulator.relay_tls import Stream, TlsOptions, proxy_cert
from telephony.simulator.shaper import LineImpairment, Shaper

Addr = tuple[str, int]

_C = re.compile(r"^c=IN IP4 ([0-9.]+)\r?$", re.MULTILINE)
_M = re.compile(r"^m=audio (\d+) ", re.MULTILINE)
_RTCP = re.compile(r"^a=rtcp:(\d+)( IN IP4 [0-9.]+)?\r?$", re.MULTILINE)
_HOSTPORT = re.compile(r"^(?:sips?:)?(?:[^@;>]*@)?([^:;>]+)(?::(\d+))?")


class ImpairError(Exception):
    """The impairment cannot be set up (a target it cannot relay for)."""


@dataclass(frozen=True)
class Impairment:
    """What a relay did to one call: its seed and settings, the RTP packets (arrival indices) dropped and held
    back for reordering each way, and the mean delay it added."""

    seed: str
    line: LineImpairment
    rx_packets: int
    rx_dropped: list[int]
    tx_packets: int
    tx_dropped: list[int]
    rx_reordered: list[int] = field(default_factory=list)
    tx_reordered: list[int] = field(default_factory=list)
    rx_delay_ms: float = 0.0
    tx_delay_ms: float = 0.0

    @property
    def loss_pct(self) -> float:
        return self.line.loss_pct


def _pair(host: str) -> tuple[socket.socket, socket.socket]:
    """Two UDP sockets on consecutive ports, the first even (RTP and RTCP)."""
    for _ in range(50):
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind((host, 0))
        port = rtp.getsockname()[1]
        if port % 2 == 0 and port < 65535:
            rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rtcp.bind((host, port + 1))
                return rtp, rtcp
            except OSError:
                rtcp.close()
        rtp.close()
    raise ImpairError(f"no free pair of UDP ports on {host} for the impairment relay")


class Relay:
    """One call's RTP and RTCP between the phone and the far end; both send to `host:port` (and port + 1). RTP is
    impaired by a `Shaper` each way, RTCP passes as it comes."""

    def __init__(self, host: str, line: LineImpairment, seed: str) -> None:
        self.seed = seed
        self.line = line
        self.to_phone = Shaper(line, f"{seed}:rx")
        self.from_phone = Shaper(line, f"{seed}:tx")
        self.phone: Addr | None = None
        self.far: Addr | None = None
        self._socks = _pair(host)
        self.host = host
        self.port = int(self._socks[0].getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"relay-{self.port}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        for i, s in enumerate(self._socks):
            sel.register(s, selectors.EVENT_READ, i)
        rtp = self._socks[0]
        while not self._stop.is_set():
            due = [t for t in (self.to_phone.next_at, self.from_phone.next_at) if t is not None]
            wait = min([0.05, *(t - time.monotonic() for t in due)])
            for key, _ in sel.select(max(0.0, wait)):
                kind: int = key.data
                sock = self._socks[kind]
                try:
                    data, src = sock.recvfrom(2048)
                except OSError:
                    continue
                phone, far = self.phone, self.far
                if phone is None or far is None:
                    continue
                # the phone's SDP may name another local address than its packets come from: match by port
                if src[1] == phone[1] + kind and src != (far[0], far[1] + kind):
                    if kind == 1:
                        sock.sendto(data, (far[0], far[1] + kind))
                    else:
                        self.from_phone.arrive(time.monotonic(), data)
                elif kind == 1:
                    sock.sendto(data, (phone[0], phone[1] + kind))
                else:
                    self.to_phone.arrive(time.monotonic(), data)
            now = time.monotonic()
            for shaper, dest in ((self.to_phone, self.phone), (self.from_phone, self.far)):
                for packet in shaper.due(now):
                    assert dest is not None
                    with contextlib.suppress(OSError):
                        rtp.sendto(packet, dest)
        sel.close()

    def close(self) -> Impairment:
        """Stop relaying; what was done to the packets each way."""
        self._stop.set()
        self._thread.join(2)
        for sock in self._socks:
            sock.close()
        rx, tx = self.to_phone, self.from_phone
        return Impairment(self.seed, self.line, rx.packets, rx.dropped, tx.packets, tx.dropped, rx.reordered,
                          tx.reordered, rx.mean_delay_ms, tx.mean_delay_ms)


def _split(msg: str) -> tuple[list[str], str]:
    head, _, body = msg.partition("\r\n\r\n")
    return head.split("\r\n"), body


def _branch(msg: str) -> str:
    """The branch of the message's top Via ('' without one)."""
    lines, _ = _split(msg)
    v = _header(lines, "via", "v")
    m = re.search(r";branch=([^;,\s]+)", lines[v]) if v > 0 else None
    return m.group(1) if m else ""


def _header(lines: list[str], *names: str) -> int:
    """Index of the first header line with one of `names` (long or compact form), -1 if none."""
    for i, line in enumerate(lines[1:], 1):
        name = line.split(":", 1)[0].strip().lower()
        if name in names:
            return i
    return -1


def next_hop(uri: str) -> tuple[Addr, str]:
    """host, port and transport (`udp`, `tcp` or `tls`: a `sips:` URI too) of a SIP URI or Route value."""
    value = uri.strip().removeprefix("<").split(">", 1)[0]
    t = re.search(r";transport=(\w+)", value, re.IGNORECASE)
    transport = t.group(1).lower() if t else ("tls" if value.lower().startswith("sips:") else "udp")
    if transport not in ("udp", "tcp", "tls"):
        raise ImpairError(f"{value}: the impairment relay (--loss, --jitter, --reorder, --skew) relays SIP over "
                          "UDP, TCP and TLS only")
    m = _HOSTPORT.match(value)
    if m is None:
        raise ImpairError(f"{value}: no host to send to")
    return (m.group(1), int(m.group(2) or (5061 if transport == "tls" else 5060))), transport


def hop(uri: str) -> Addr:
    """host and port of a SIP URI or Route value (see `next_hop`)."""
    return next_hop(uri)[0]


def framed(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The complete SIP messages at the start of a stream-transport buffer (RFC 3261 18.3: Content-Length frames
    the body; CRLF keep-alives between messages are skipped), and the rest."""
    out: list[bytes] = []
    while True:
        buffer = buffer.lstrip(b"\r\n")
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return out, buffer
        m = re.search(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)", buffer[:end], re.IGNORECASE | re.MULTILINE)
        size = end + 4 + (int(m.group(1)) if m else 0)
        if len(buffer) < size:
            return out, buffer
        out.append(buffer[:size])
        buffer = buffer[size:]


class SdpProxy:
    """The phone's outbound proxy on `host`; a call's INVITE gets a relay when `arm()` asked for one. With `tls`,
    it also listens for the phone's TLS (`tls_uri`) and reaches TLS targets."""

    def __init__(self, host: str = "127.0.0.1", tls: TlsOptions | None = None) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self.addr: Addr = (host, int(self._sock.getsockname()[1]))
        self.relays: dict[str, Relay] = {}
        self._armed: deque[tuple[LineImpairment, str]] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.errors: list[str] = []
        self._conns: dict[Addr, Stream] = {}
        """TCP and TLS connections to next hops (the far end answers, and sends its requests, on them too)."""
        self._ours: set[Addr] = {self.addr}
        """Addresses that name this proxy in a Route: its sockets and the local ends of its TLS connections."""
        self.tls = tls
        self.cert = proxy_cert(host) if tls is not None else None
        self._client = tls.client_context() if tls is not None else None
        self._phone: Stream | None = None
        """The phone's TLS connection to us (a proxy serves one phone)."""
        self._far_requests: dict[str, Callable[[bytes], None]] = {}
        """Top Via branch of each request from a far end's connection -> how to answer on that connection (a far
        end's Via may name a port that takes no connection)."""
        self.tls_addr: Addr | None = None
        self._threads = [threading.Thread(target=self._run, name="sdp-proxy", daemon=True)]
        self._listener: socket.socket | None = None
        if self.cert is not None:
            self._listener = socket.create_server((host, 0))
            self._listener.settimeout(0.05)
            self.tls_addr = (host, int(self._listener.getsockname()[1]))
            self._ours.add(self.tls_addr)
            self._threads.append(threading.Thread(target=self._accept, name="sdp-proxy-tls", daemon=True))
        for t in self._threads:
            t.start()

    @property
    def uri(self) -> str:
        return f"sip:{self.addr[0]}:{self.addr[1]};lr"

    @property
    def tls_uri(self) -> str:
        """The proxy's TLS address as the phone's outbound proxy (needs `tls`)."""
        if self.tls_addr is None:
            raise ImpairError("the impairment relay was started without TLS options")
        return f"sips:{self.tls_addr[0]}:{self.tls_addr[1]};lr"

    def arm(self, line: LineImpairment, seed: str) -> None:
        """The next new call (Call-ID) without a relay gets one impairing its RTP each way as `line` says. Arms queue
        up in order: a phone that dials several calls arms each before its INVITE, and the INVITEs reach the proxy
        in the order they were sent."""
        with self._lock:
            self._armed.append((line, seed))

    def disarm(self) -> None:
        """Take back the newest arm (its call sent no INVITE)."""
        with self._lock:
            if self._armed:
                self._armed.pop()

    def release(self, call_id: str) -> Impairment | None:
        """Stop the call's relay; what it dropped."""
        with self._lock:
            relay = self.relays.pop(call_id, None)
        return relay.close() if relay else None

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self._sock.close()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
            phone, self._phone = self._phone, None
        for conn in [*conns, *([phone] if phone else [])]:
            conn.close()
        for call_id in list(self.relays):
            self.release(call_id)
        if self.cert is not None:
            self.cert.folder.cleanup()

    def _run(self) -> None:
        self._sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                data, src = self._sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            self._handle(data, "udp", self._udp_reply(src))

    def _udp_reply(self, src: Addr) -> Callable[[bytes], None]:
        def reply(out: bytes) -> None:
            self._sock.sendto(out, src)
        return reply

    def _accept(self) -> None:
        assert self._listener is not None and self.cert is not None
        ctx = self.cert.server_context()
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve_phone, args=(ctx, raw), name="sdp-proxy-phone", daemon=True).start()

    def _serve_phone(self, ctx: ssl.SSLContext, raw: socket.socket) -> None:
        raw.settimeout(5)
        try:
            stream = Stream(ctx.wrap_socket(raw, server_side=True))
        except (ssl.SSLError, OSError) as e:
            self.errors.append(f"the phone's TLS handshake with the relay failed: {e!r}")
            raw.close()
            return
        with self._lock:
            self._phone = stream
        self._read(None, stream, "phone")

    def _handle(self, data: bytes, origin: str, reply: Callable[[bytes], None]) -> None:
        """Pass on a message that came from `origin`: 'udp', 'phone' (its TLS connection) or 'far' (a connection
        to a next hop); `reply` answers on the way it came."""
        try:
            text = data.decode("utf-8", "replace")
            if origin == "far" and not text.startswith("SIP/2.0"):
                self._far_requests[_branch(text)] = reply  # its responses go back on the connection it came on
            out, dest, transport = self._forward(text)
            if transport == "tls" and origin == "far":  # the far end's messages go back on the phone's connection
                if self._phone is None:
                    raise ImpairError("the phone has no TLS connection to the relay")
                self._phone.send(out.encode())
            elif transport == "udp":
                self._sock.sendto(out.encode(), dest)
            elif out.startswith("SIP/2.0") and (back := self._far_requests.get(_branch(out))) is not None:
                if not out.startswith("SIP/2.0 1"):
                    self._far_requests.pop(_branch(out), None)
                back(out.encode())
            else:
                self._connection(dest, transport).send(out.encode())
        except Exception as e:  # a message it cannot handle is reported (a request is refused), and the proxy goes on
            self.errors.append(f"{e!r}")
            refusal = refuse(data.decode("utf-8", "replace"), str(e))
            if refusal is not None:
                with contextlib.suppress(OSError):
                    reply(refusal)

    def _connection(self, dest: Addr, transport: str) -> Stream:
        """The TCP or TLS connection to `dest` (opened on first use, read by its own thread)."""
        with self._lock:
            conn = self._conns.get(dest)
            if conn is None:
                conn = Stream(self._open(dest, transport))
                self._conns[dest] = conn
                self._ours.add(conn.local)
                threading.Thread(target=self._read, args=(dest, conn, "far"), name=f"sdp-proxy-{transport}-{dest[1]}",
                                 daemon=True).start()
            return conn

    def _open(self, dest: Addr, transport: str) -> socket.socket:
        try:
            sock = socket.create_connection(dest, timeout=5)
        except OSError as e:
            raise ImpairError(f"{transport.upper()} to {dest[0]}:{dest[1]}: {e.strerror or e}") from None
        if transport != "tls":
            return sock
        if self._client is None:
            sock.close()
            raise ImpairError(f"{dest[0]}:{dest[1]} is a TLS target: give --tls-ca FILE (or --insecure)")
        try:
            return self._client.wrap_socket(sock, server_hostname=dest[0])
        except (ssl.SSLError, OSError) as e:
            sock.close()
            why = (f"certificate verify failed ({e.verify_message})" if isinstance(e, ssl.SSLCertVerificationError)
                   else e.strerror or str(e))
            raise ImpairError(f"TLS to {dest[0]}:{dest[1]} failed: {why}") from None

    def _read(self, dest: Addr | None, conn: Stream, origin: str) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                data = conn.recv()
            except OSError:
                break
            if data is None:
                continue
            if not data:
                break
            messages, buffer = framed(buffer + data)
            for msg in messages:
                self._handle(msg, origin, conn.send)
        with self._lock:
            if dest is not None and self._conns.get(dest) is conn:
                del self._conns[dest]
            if self._phone is conn:
                self._phone = None
        conn.close()

    def _relay(self, lines: list[str], offer: bool) -> Relay | None:
        i = _header(lines, "call-id", "i")
        call_id = lines[i].split(":", 1)[1].strip() if i > 0 else ""
        with self._lock:
            if call_id not in self.relays and offer and self._armed:
                self.relays[call_id] = Relay(self.addr[0], *self._armed.popleft())
            return self.relays.get(call_id)

    def _forward(self, msg: str) -> tuple[str, Addr, str]:
        """The message to pass on, where to, and over which transport."""
        lines, body = _split(msg)
        response = lines[0].startswith("SIP/2.0")
        relay = self._relay(lines, offer=not response and lines[0].startswith("INVITE"))
        if relay is not None and body and _M.search(body):
            body = self._rewrite(body, relay, from_phone=not response)
        if response:
            v = _header(lines, "via", "v")
            name, values = lines[v].split(":", 1)
            rest = values.split(",")[1:]  # ours is the first value (a far end may join them on one line)
            if rest:
                lines[v] = f"{name}:{','.join(rest)}"
            else:
                lines.pop(v)
            protocol, via = lines[_header(lines, "via", "v")].split(":", 1)[1].split(",")[0].split()[:2]
            dest, transport = hop(via.split(";")[0]), protocol.rsplit("/", 1)[-1].lower()
        else:
            routes = self._pop_routes(lines)
            dest, transport = next_hop(routes[0] if routes else lines[0].split()[1])
            top = f"z9hG4bK{hashlib.sha1(lines[_header(lines, 'via', 'v')].encode()).hexdigest()[:16]}"
            me = self.tls_addr if transport == "tls" and self.tls_addr else self.addr
            lines.insert(1, f"Via: SIP/2.0/{transport.upper()} {me[0]}:{me[1]};branch={top}")
            if transport == "tls" and lines[0].startswith("INVITE ") and self._dialog_starts(lines):
                far = self._connection(dest, "tls").local  # where the far end's in-dialog requests find us
                lines.insert(1, f"Record-Route: <sips:{far[0]}:{far[1]};lr>, <sips:{me[0]}:{me[1]};lr>")
            mf = _header(lines, "max-forwards")
            if mf > 0:
                hops = int(lines[mf].split(":", 1)[1]) - 1
                if hops < 0:
                    raise ImpairError("Max-Forwards exhausted")
                lines[mf] = f"Max-Forwards: {hops}"
        n = _header(lines, "content-length", "l")
        if n > 0:
            lines[n] = f"Content-Length: {len(body.encode())}"
        return "\r\n".join(lines) + "\r\n\r\n" + body, dest, transport

    def _pop_routes(self, lines: list[str]) -> list[str]:
        """Take the leading Route values that name this proxy off the request; the Route values left."""
        values: list[str] = []
        at = -1
        while (r := _header(lines, "route")) > 0:
            values += [v.strip() for v in lines.pop(r).split(":", 1)[1].split(",") if v.strip()]
            at = r if at < 0 else at
        while values and self._names_us(values[0]):
            values.pop(0)
        if values:
            lines.insert(at, "Route: " + ", ".join(values))
        return values

    def _names_us(self, value: str) -> bool:
        m = _HOSTPORT.match(value.strip().removeprefix("<"))
        return m is not None and (m.group(1), int(m.group(2) or 0)) in self._ours

    @staticmethod
    def _dialog_starts(lines: list[str]) -> bool:
        """A request outside a dialog (its To has no tag)."""
        t = _header(lines, "to", "t")
        return t > 0 and ";tag=" not in lines[t].lower()

    @staticmethod
    def _rewrite(sdp: str, relay: Relay, from_phone: bool) -> str:
        """The SDP's audio address becomes the relay's; the real one is where the relay sends that side's RTP."""
        c, m = _C.search(sdp), _M.search(sdp)
        if c is None or m is None:
            raise ImpairError("an SDP without an IPv4 audio address: the impairment relay cannot relay it")
        real = (c.group(1), int(m.group(1)))
        if from_phone:
            relay.phone = real
        else:
            relay.far = real
        sdp = _C.sub(f"c=IN IP4 {relay.host}", sdp)
        sdp = _M.sub(f"m=audio {relay.port} ", sdp, count=1)
        return _RTCP.sub(f"a=rtcp:{relay.port + 1} IN IP4 {relay.host}", sdp)


def refuse(msg: str, why: str) -> bytes | None:
    """A 503 answering the request `msg` with `why` as its reason (RFC 3261 8.2.6); None for a response or an
    ACK, which get no answer."""
    lines, _ = _split(msg)
    if lines[0].startswith("SIP/2.0") or lines[0].startswith("ACK ") or " " not in lines[0]:
        return None
    keep = [ln for ln in lines[1:] if ln.split(":", 1)[0].strip().lower() in ("via", "v", "from", "f", "call-id", "i",
                                                                              "cseq")]
    t = _header(lines, "to", "t")
    if t > 0:
        keep.append(lines[t] if ";tag=" in lines[t].lower() else f"{lines[t]};tag=impairment-relay")
    reason = " ".join(f"impairment relay: {why}".split())[:200]
    return ("\r\n".join([f"SIP/2.0 503 {reason}", *keep, "Content-Length: 0"]) + "\r\n\r\n").encode()
