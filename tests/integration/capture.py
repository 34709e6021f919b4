"""RTP as seen on the wire: tcpdump captures, and its `-x` hex dump is read back into timed packets.

tcpdump does the capturing and the pcap reading; this module only cuts the IPv4/UDP/RTP headers off its dump.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_HEAD = re.compile(r"^(\d+\.\d+) IP (\S+)\.(\d+) > (\S+)\.(\d+): UDP")


@dataclass(frozen=True)
class Packet:
    t: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes
    """The RTP payload (after the fixed header and CSRCs)."""


class Capture:
    """tcpdump writing UDP packets on `iface` (except SIP on `sip_port`) to `path`, run through `prefix`."""

    def __init__(self, path: Path, iface: str, sip_port: int, prefix: Sequence[str] = ()) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [*prefix, "tcpdump", "-i", iface, "-n", "-U", "-w", str(path), f"udp and not port {sip_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on ...": packets from now on are captured
        if "listening" not in line:
            raise RuntimeError(f"tcpdump did not start: {line}")

    def stop(self) -> list[Packet]:
        time.sleep(0.05)  # -U: the last packet is written out within a few ms
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(5)
        dump = subprocess.run(["tcpdump", "-r", str(self.path), "-n", "-tt", "-x"], capture_output=True, text=True,
                              timeout=30, check=True).stdout
        return parse(dump)


def parse(dump: str) -> list[Packet]:
    """Packets of `tcpdump -n -tt -x` output (IPv4 UDP carrying RTP)."""
    out: list[Packet] = []
    head: re.Match[str] | None = None
    hexes: list[str] = []

    def flush() -> None:
        if head is None:
            return
        raw = bytes.fromhex("".join(hexes))
        ihl = (raw[0] & 0x0F) * 4
        rtp = raw[ihl + 8:]
        if len(rtp) < 12 or rtp[0] >> 6 != 2 or 192 <= rtp[1] <= 223:
            return  # not RTP, or RTCP (packet types 192-223, RFC 5761 4)
        start = 12 + 4 * (rtp[0] & 0x0F)
        out.append(Packet(float(head[1]), (head[2], int(head[3])), (head[4], int(head[5])), rtp[start:]))

    for line in dump.splitlines():
        if line.startswith("\t") or line.startswith(" "):
            hexes.extend(line.split(":", 1)[1].split())
            continue
        flush()
        head, hexes = _HEAD.match(line), []
    flush()
    return out
