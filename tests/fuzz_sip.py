"""A SIP fuzzer for robustness tests: valid requests (INVITE with SDP, OPTIONS, BYE, ACK, CANCEL, REGISTER)
mutated one or a few ways each (broken start lines, bad or duplicate headers, huge headers, bad Content-Length,
broken SDP, wrong CSeq, unknown methods, truncated UTF-8), sent over UDP. Deterministic for a seed.

Hand-written: the SIP fuzzers that exist (PROTOS c07-sip, sipvicious) are suites or CLI tools that are not
packaged here; what a test needs is a reproducible stream of messages it can pace and count.

    python -m tests.fuzz_sip 127.0.0.1:5060 --count 10000 --rate 500
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import socket
import time
from collections.abc import Callable, Iterator

SDP = ("v=0\r\no=fuzz 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio {rtp} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
       "a=sendrecv\r\n")
METHODS = ("INVITE", "OPTIONS", "BYE", "ACK", "CANCEL", "REGISTER")


def request(method: str, host: str, port: int, lport: int, n: int, rtp: int, seed: int = 0) -> str:
    body = SDP.format(rtp=rtp) if method == "INVITE" else ""
    tag = f"f{n:x}"
    to_tag = ";tag=t1" if method in ("BYE", "ACK") else ""
    return (f"{method} sip:echo@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{tag}x;rport\r\n"
            f"From: \"Fuzz Caller\" <sip:fuzz@127.0.0.1:{lport}>;tag={tag}\r\n"
            f"To: <sip:echo@{host}:{port}>{to_tag}\r\n"
            f"Call-ID: fuzz-{seed}-{n}@127.0.0.1\r\nCSeq: {n % 1000 + 1} {method}\r\n"
            f"Contact: <sip:fuzz@127.0.0.1:{lport}>\r\nMax-Forwards: 70\r\n"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body.encode())}\r\n\r\n{body}")


def _lines(msg: str) -> tuple[list[str], str]:
    head, _, body = msg.partition("\r\n\r\n")
    return head.split("\r\n"), body


def _join(lines: list[str], body: str) -> str:
    return "\r\n".join(lines) + "\r\n\r\n" + body


def start_line(r: random.Random, msg: str) -> str:
    lines, body = _lines(msg)
    method, uri, _ = (lines[0].split(" ") + ["", "", ""])[:3]
    lines[0] = r.choice([f"{method} {uri}", f"{method}  {uri} SIP/2.0", f"{method} {uri} SIP/3.0", f"{uri} SIP/2.0",
                         f"{method} <{uri}> SIP/2.0", f"{method} sip:@ SIP/2.0", f"{method} {uri} SIP/2.0 extra",
                         "\x00\x01\x02", "", f"{method}\t{uri}\tSIP/2.0", f"{method} {'x' * 3000} SIP/2.0"])
    return _join(lines, body)


def unknown_method(r: random.Random, msg: str) -> str:
    m = r.choice(["FOO", "invite", "INVITEX", "PRACK", "INFO", "UPDATE", "PUBLISH", "SUBSCRIBE", "REFER", "X" * 200])
    first = msg.split(" ", 1)[0]
    return re.sub(r"(?m)^CSeq: (\S+) \S+", lambda c: f"CSeq: {c.group(1)} {m}", msg.replace(first, m, 1), count=1)


def bad_header(r: random.Random, msg: str) -> str:
    lines, body = _lines(msg)
    i = r.randrange(1, len(lines))
    name = lines[i].split(":", 1)[0]
    lines[i] = r.choice([lines[i].replace(":", "", 1), f"{name}:", f"{name}: <<<>>>", f"{name}: \x7f\x80\xff",
                         f"{name} : {lines[i].split(':', 1)[-1]}", f" {lines[i]}", f"{name}: " + "%" * 40,
                         lines[i].replace("@", "@@"), lines[i].replace("sip:", "sip:\r\n")])
    return _join(lines, body)


def duplicate_header(r: random.Random, msg: str) -> str:
    lines, body = _lines(msg)
    i = r.randrange(1, len(lines))
    dup = lines[i]
    for old, new in (("fuzz-", "other-"), ("tag=", "tag=x"), ("CSeq: ", "CSeq: 9"), ("Length: ", "Length: 1")):
        dup = dup.replace(old, new, 1)
    lines.insert(r.randrange(1, len(lines) + 1), dup)
    return _join(lines, body)


def huge_header(r: random.Random, msg: str) -> str:
    lines, body = _lines(msg)
    size = r.choice([1000, 4000, 8000, 30000, 60000])
    lines.insert(r.randrange(1, len(lines) + 1), r.choice(["X-Big", "Subject", "Via", "Contact"]) + ": " + "a" * size)
    return _join(lines, body)


def content_length(r: random.Random, msg: str) -> str:
    lines, body = _lines(msg)
    lines = [ln for ln in lines if not ln.startswith("Content-Length")]
    value = r.choice(["-1", "99999", "0", "abc", "", "4294967296", str(len(body) + 10), str(max(len(body) - 10, 0)),
                      "1e3"])
    if r.random() < 0.9:
        lines.append(f"Content-Length: {value}")
    return _join(lines, body)


def broken_sdp(r: random.Random, msg: str) -> str:
    lines, body = _lines(msg)
    sdp = body.split("\r\n") if body else SDP.format(rtp=4000).split("\r\n")
    if sdp:
        i = r.randrange(len(sdp))
        sdp[i] = r.choice(["m=audio 0 RTP/AVP", "m=audio 70000 RTP/AVP 0", "m=video 4000 RTP/AVP 31",
                           "c=IN IP4 999.1.1.1", "c=IN IP4", "a=rtpmap:0", "m=audio x RTP/AVP 0",
                           "v=9", "garbage", "a=" + "b" * 2000, "m=audio 4000 RTP/SAVP 0", "m=audio 4000 RTP/AVP 0 "
                           + " ".join(str(k) for k in range(96, 128)), ""])
    body = "\r\n".join(sdp)
    lines = [ln for ln in lines if not ln.startswith("Content-Length")] + [f"Content-Length: {len(body.encode())}"]
    if not any(ln.startswith("Content-Type") for ln in lines):
        lines.append("Content-Type: application/sdp")
    return _join(lines, body)


def wrong_cseq(r: random.Random, msg: str) -> str:
    lines, body = _lines(msg)
    lines = [(("CSeq: " + r.choice(["1 BYE", "x INVITE", "-5 INVITE", "4294967296 INVITE", "1", "", "1 INVITE 2",
                                     "99999999999999999999 OPTIONS"])) if ln.startswith("CSeq") else ln)
             for ln in lines]
    return _join(lines, body)


def drop_header(r: random.Random, msg: str) -> str:
    lines, body = _lines(msg)
    del lines[r.randrange(1, len(lines))]
    return _join(lines, body)


MUTATIONS: tuple[Callable[[random.Random, str], str], ...] = (
    start_line, unknown_method, bad_header, duplicate_header, huge_header, content_length, broken_sdp, wrong_cseq,
    drop_header)


def truncated_utf8(r: random.Random, data: bytes) -> bytes:
    """Put a display name with multi-byte characters in and cut it mid-character (and maybe the whole message)."""
    name = "Zoë Ünïcødé 電話 ☎".encode()
    cut = name[: r.choice([3, 6, 10, 15, len(name) - 1])]
    data = data.replace(b'"Fuzz Caller"', b'"' + cut + b'"', 1)
    return data[: r.randrange(len(data) // 2, len(data))] if r.random() < 0.3 else data


def corpus(seed: int, count: int, host: str, port: int, lport: int, rtp: int = 4000) -> Iterator[bytes]:
    """`count` mutated requests: each a valid request with 1-3 mutations (one in ten: also truncated UTF-8)."""
    r = random.Random(seed)
    for n in range(count):
        msg = request(r.choice(METHODS), host, port, lport, n, rtp, seed)
        for m in r.sample(MUTATIONS, r.randint(1, 3)):
            msg = m(r, msg)
        data = msg.encode("utf-8", "surrogateescape")
        if r.random() < 0.1:
            data = truncated_utf8(r, data)
        yield data[:65507]


def blast(host: str, port: int, count: int, rate: float, seed: int = 1) -> int:
    """Send `count` mutated requests at `rate` a second; returns how many replies came back (read as they arrive)."""
    replies = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        lport = s.getsockname()[1]
        t0 = time.monotonic()
        for i, data in enumerate(corpus(seed, count, host, port, lport)):
            with contextlib.suppress(OSError):  # e.g. too large for the socket: the peer never sees it
                s.sendto(data, (host, port))
            while True:
                try:
                    s.recv(65535)
                    replies += 1
                except (BlockingIOError, ConnectionRefusedError):
                    break
            delay = t0 + (i + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return replies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="HOST:PORT (UDP)")
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    host, port = a.target.rsplit(":", 1)
    t0 = time.monotonic()
    replies = blast(host, int(port), a.count, a.rate, a.seed)
    print(f"sent {a.count} mutated requests to {a.target} in {time.monotonic() - t0:.1f} s; {replies} replies")


if __name__ == "__main__":
    main()
