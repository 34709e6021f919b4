"""An RTP fuzzer for robustness tests: malformed packets (short, wrong version, a CSRC count the packet cannot hold,
bad padding, a header extension longer than the packet, wrong payload types, huge packets, random bytes, RTCP-port
garbage) and bursts of well-formed packets with a wrong SSRC or wild sequence and timestamp jumps, sent over UDP
from the call's own address and from others. Deterministic for a seed.

Well-formed packets come from aiortc's `RtpPacket`; the malformations are written by hand, as in tests/fuzz_sip.py:
no packaged fuzzer makes a reproducible RTP stream a test can pace and count.

    python -m tests.fuzz_rtp 127.0.0.1:20000 --count 2000 --rate 1000
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import time
from collections.abc import Callable, Iterator

from aiortc.rtp import RtpPacket

Packet = tuple[bytes, int]
"""The bytes and the port offset they go to (0: RTP, 1: RTCP)."""


def _rtp(r: random.Random, ssrc: int, pt: int = 0, size: int = 160, seq: int | None = None,
         ts: int | None = None) -> bytes:
    return RtpPacket(payload_type=pt, sequence_number=r.randrange(65536) if seq is None else seq,
                     timestamp=r.randrange(2**32) if ts is None else ts, ssrc=ssrc,
                     payload=r.randbytes(size)).serialize()


def short(r: random.Random, ssrc: int) -> list[Packet]:
    return [(r.randbytes(r.randrange(0, 12)), 0)]


def wrong_version(r: random.Random, ssrc: int) -> list[Packet]:
    data = bytearray(_rtp(r, ssrc))
    data[0] = (data[0] & 0x3F) | (r.choice([0, 1, 3]) << 6)
    return [(bytes(data), 0)]


def huge_csrc_count(r: random.Random, ssrc: int) -> list[Packet]:
    data = bytearray(_rtp(r, ssrc, size=r.randrange(0, 40)))
    data[0] |= 0x0F  # 15 CSRCs: 60 bytes the packet does not have
    return [(bytes(data), 0)]


def bad_padding(r: random.Random, ssrc: int) -> list[Packet]:
    data = bytearray(_rtp(r, ssrc, size=r.randrange(1, 160)))
    data[0] |= 0x20
    data[-1] = r.choice([0, 255, len(data) - 11, len(data)])  # zero, or more padding than payload
    return [(bytes(data), 0)]


def bad_extension(r: random.Random, ssrc: int) -> list[Packet]:
    data = bytearray(_rtp(r, ssrc, size=8))
    data[0] |= 0x10
    data[12:16] = bytes([0xBE, 0xDE, 0xFF, 0xFF])  # a 65535-word extension in an 8-byte payload
    return [(bytes(data), 0)]


def wrong_payload_type(r: random.Random, ssrc: int) -> list[Packet]:
    # 72-76 with the marker bit read as RTCP (200-204); 101 (telephone-event) with a garbage payload
    return [(_rtp(r, ssrc, pt=r.choice([8, 9, 13, 18, 34, 72, 76, 96, 101, 127]), size=r.randrange(0, 400)), 0)]


def huge(r: random.Random, ssrc: int) -> list[Packet]:
    return [(_rtp(r, ssrc, size=r.choice([1500, 4000, 9000, 30000, 65000])), 0)]


def random_bytes(r: random.Random, ssrc: int) -> list[Packet]:
    return [(r.randbytes(r.randrange(12, 1500)), r.choice([0, 0, 0, 1]))]


def rtcp_garbage(r: random.Random, ssrc: int) -> list[Packet]:
    head = bytes([0x80 | r.randrange(32), r.choice([200, 201, 202, 203, 204, 205, 206, 207])])
    return [(head + r.choice([b"", b"\xff\xff", r.randbytes(r.randrange(0, 200))]), 1)]


def wrong_ssrc_burst(r: random.Random, ssrc: int) -> list[Packet]:
    other, seq, ts = r.randrange(2**32), r.randrange(65536), r.randrange(2**32)
    return [(_rtp(r, other, seq=(seq + i) % 65536, ts=(ts + 160 * i) % 2**32), 0) for i in range(20)]


def sequence_jumps(r: random.Random, ssrc: int) -> list[Packet]:
    return [(_rtp(r, ssrc), 0) for _ in range(5)]  # the call's SSRC, every sequence number and timestamp random


MUTATIONS: list[Callable[[random.Random, int], list[Packet]]] = [
    short, wrong_version, huge_csrc_count, bad_padding, bad_extension, wrong_payload_type, huge, random_bytes,
    rtcp_garbage, wrong_ssrc_burst, sequence_jumps]


def corpus(seed: int, count: int, ssrc: int) -> Iterator[Packet]:
    """`count` packets, cases drawn at random (bursts count each packet); `ssrc` is the call's own."""
    r = random.Random(seed)
    sent = 0
    while sent < count:
        for p in r.choice(MUTATIONS)(r, ssrc)[: count - sent]:
            sent += 1
            yield p


def blast(host: str, port: int, count: int, rate: float, seed: int = 1, ssrc: int = 0,
          own: socket.socket | None = None) -> int:
    """Send `count` packets at `rate` a second to RTP `port` (and its RTCP port), half from `own` (the socket the
    call's media comes from, when given) and half from another socket; returns how many were sent."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.1", 0))
        r = random.Random(seed + 1)
        t0 = time.monotonic()
        for i, (data, offset) in enumerate(corpus(seed, count, ssrc)):
            sock = own if own is not None and r.random() < 0.5 else other
            with contextlib.suppress(OSError):  # e.g. too large for the socket: the peer never sees it
                sock.sendto(data, (host, port + offset))
                sent += 1
            delay = t0 + (i + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return sent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="HOST:PORT of an RTP stream (UDP); RTCP is PORT+1")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ssrc", type=int, default=0, help="the call's SSRC, for the sequence-jump case")
    a = p.parse_args()
    host, port = a.target.rsplit(":", 1)
    t0 = time.monotonic()
    sent = blast(host, int(port), a.count, a.rate, a.seed, a.ssrc)
    print(f"sent {sent} of {a.count} packets to {a.target} in {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
