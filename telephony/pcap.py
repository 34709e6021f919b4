"""A call's SIP messages and RTP/RTCP as one pcap file that Wireshark opens, on request (a route's `pcap: true`, or
`POST /calls/<Call-ID>/pcap` on the control endpoint).

Two sources, because pjsua2 hands Python no packets (pjmedia's pcap support only reads files):
- SIP from the call's SIP trace (`records.sip_trace`, telephony/sip_trace.py): pjsip logs every message it sends
  or receives with the far end's transport address and the message's size in bytes. Each message becomes one UDP
  datagram between that address and the gateway's (a message that went over TCP or TLS is written as its clear
  text in one datagram: the file shows the dialog, not the transport).
- RTP and RTCP from `tcpdump` (Debian), started once the call's media is up and filtered on the call's local RTP
  and RTCP ports; it needs the right to capture (root or CAP_NET_RAW), as a raw socket of our own would, without
  hand-written capture code. Packets before it listens, or not yet taken when SIGINT stops it, are not in the file.

dpkt writes the merged file (Ethernet frames with zero addresses, time order). `parse_trace` and `sip_packets` are
pure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dpkt

from telephony.errors import VoicegateError

Packet = tuple[float, bytes]
"""A captured IP packet (IPv4 or IPv6) and its wall-clock time."""

_ENTRY = re.compile(r"^(\S+T\S+\.\d{3}) ([RT]X) (\d+) bytes .*? (?:from|to) (\w+) (\S+):(\d+):\n", re.M)
START_TIMEOUT_S = 5.0
"""How long tcpdump may take to say it listens."""


class PcapError(VoicegateError):
    """A capture could not be made (tcpdump missing, not allowed to capture, or its file unreadable)."""


class CaptureRefusedError(VoicegateError):
    """A request for a call's pcap that cannot be met: `status` is the HTTP status the control endpoint answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class SipMessage:
    time: float
    """Wall clock, as the trace stamped it (milliseconds)."""
    sent: bool
    transport: str
    peer: tuple[str, int]
    data: bytes


def parse_trace(text: str) -> list[SipMessage]:
    """The messages of a SIP trace file's text (read with `newline=""`, so CRLFs stay). The trace drops a message's
    trailing LFs; the size pjsip logged gives them back."""
    found = list(_ENTRY.finditer(text))
    out = []
    ends = [m.start() for m in found[1:]] + [len(text)]
    for m, end in zip(found, ends, strict=False):  # no entry: no end either
        body = text[m.end() : end].removesuffix("\n\n").encode()
        size = int(m.group(3))
        body += b"\n" * (size - len(body))  # the trace strips the message's trailing LFs
        stamp = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp()
        out.append(SipMessage(stamp, m.group(2) == "TX", m.group(4), (m.group(5).strip("[]"), int(m.group(6))),
                              body))
    return out


def _ip(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=src[1], dport=dst[1], data=payload)
    udp.ulen = len(udp)
    a, b = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if a.version != b.version:  # an IPv4 peer of an IPv6 socket, or the reverse: show both as IPv6
        a, b = (x if x.version == 6 else ipaddress.IPv6Address(f"::ffff:{x}") for x in (a, b))
    if a.version == 4:
        ip4 = dpkt.ip.IP(src=a.packed, dst=b.packed, p=dpkt.ip.IP_PROTO_UDP, data=udp)
        ip4.len = len(ip4)
        return bytes(ip4)
    ip6 = dpkt.ip6.IP6(src=a.packed, dst=b.packed, nxt=dpkt.ip.IP_PROTO_UDP, hlim=64, data=udp)
    ip6.plen = len(udp)
    return bytes(ip6)


def sip_packets(messages: list[SipMessage], local: tuple[str, int]) -> list[Packet]:
    """Each message as an IP/UDP packet between the far end and `local` (the gateway's SIP address)."""
    return [(m.time, _ip(local, m.peer, m.data) if m.sent else _ip(m.peer, local, m.data)) for m in messages]


def read_capture(path: Path) -> list[Packet]:
    """The IP packets of a tcpdump file (`-i any`: Linux cooked v1 or v2 frames; Ethernet; raw IP)."""
    out: list[Packet] = []
    with path.open("rb") as f:
        try:
            reader = dpkt.pcap.Reader(f)
        except ValueError as e:
            raise PcapError(f"{path}: not a pcap file ({e})") from None
        link = reader.datalink()
        for ts, frame in reader:
            if link == dpkt.pcap.DLT_LINUX_SLL2:
                ip = dpkt.sll2.SLL2(frame).data
            elif link == dpkt.pcap.DLT_LINUX_SLL:
                ip = dpkt.sll.SLL(frame).data
            elif link == dpkt.pcap.DLT_EN10MB:
                ip = dpkt.ethernet.Ethernet(frame).data
            else:
                ip = frame
            if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                out.append((float(ts), bytes(ip)))
    return out


def merge(out: Path, packets: list[Packet]) -> None:
    """Write `packets` in time order to `out` (mode 0640: it holds the call's audio) as a pcap of Ethernet
    frames."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640), "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB)
        for ts, ip in sorted(packets, key=lambda p: p[0]):
            kind = dpkt.ethernet.ETH_TYPE_IP if ip[0] >> 4 == 4 else dpkt.ethernet.ETH_TYPE_IP6
            w.writepkt(bytes(dpkt.ethernet.Ethernet(src=b"\0" * 6, dst=b"\0" * 6, type=kind, data=ip)), ts)


class RtpCapture:
    """tcpdump on every interface, writing the UDP packets of `ports` to `path` until `stop`."""

    def __init__(self, path: Path, ports: tuple[int, ...]) -> None:
        self.path = path
        self.ports = ports
        self.listening_at: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start tcpdump and wait until it listens (blocks up to START_TIMEOUT_S; run it off the loop)."""
        exe = shutil.which("tcpdump")
        if exe is None:
            raise PcapError("tcpdump is not installed (Debian package tcpdump): no RTP capture")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        bpf = "udp and (" + " or ".join(f"port {p}" for p in self.ports) + ")"
        try:
            self._proc = subprocess.Popen([exe, "-i", "any", "-n", "-U", "--immediate-mode", "-s", "0", "-w",
                                           str(self.path), bpf], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            raise PcapError(f"cannot run {exe}: {e.strerror or e}") from None
        assert self._proc.stderr is not None
        fd = self._proc.stderr.fileno()
        deadline = time.monotonic() + START_TIMEOUT_S
        said = b""
        while b"listening on" not in said and (left := deadline - time.monotonic()) > 0:
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:  # tcpdump exited
                    break
                said += chunk
        if b"listening on" in said:
            self.listening_at = time.time()
            return
        self.stop()
        text = " / ".join(said.decode(errors="replace").split("\n")).strip(" /")
        raise PcapError(f"tcpdump did not start capturing: {text[-300:] or 'no output'}")

    def stop(self) -> list[Packet]:
        """Stop tcpdump and read what it captured (none if it never listened)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # tcpdump flushes its file and exits
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        if self.listening_at is None or not self.path.exists():
            return []
        try:
            return read_capture(self.path)
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink()


def split_address(name: str) -> tuple[str, int]:
    """`127.0.0.1:4000` or `[::1]:4000` as (host, port)."""
    host, _, port = name.rpartition(":")
    return host.strip("[]"), int(port)


class CallPcap:
    """One call's pcap: `start` captures its RTP once the media is up, `finish` writes the file at its end (both
    block: run them off the loop)."""

    def __init__(self, folder: Path, trace: Path) -> None:
        self.path = folder / f"{trace.stem}.pcap"
        """Named as the call's SIP trace file: the Call-ID, made safe for a file name."""
        self.trace = trace
        self.capture: RtpCapture | None = None
        self.local_ip = ""

    def start(self, local_rtp: str) -> None:
        """Capture the RTP and RTCP ports of the call's media address `local_rtp` (`host:port`)."""
        host, port = split_address(local_rtp)
        self.local_ip = host
        self.capture = RtpCapture(self.path.with_suffix(".rtp.tmp"), (port, port + 1))
        self.capture.start()

    def finish(self, sip_listen: str, sip_port: int) -> dict[str, object]:
        """Write the pcap, the gateway's side of SIP at `sip_listen` (the media address's host when that is
        0.0.0.0 or ::); returns the call record's fields: `pcap` (its path), `pcap_sip` and `pcap_rtp` (packet
        counts)."""
        rtp = self.capture.stop() if self.capture is not None else []
        try:
            with self.trace.open(encoding="utf-8", newline="") as f:
                messages = parse_trace(f.read())
        except FileNotFoundError:
            messages = []
        ip = self.local_ip if ipaddress.ip_address(sip_listen).is_unspecified and self.local_ip else sip_listen
        sip = sip_packets(messages, (ip, sip_port))
        merge(self.path, sip + rtp)
        return {"pcap": str(self.path), "pcap_sip": len(sip), "pcap_rtp": len(rtp)}
