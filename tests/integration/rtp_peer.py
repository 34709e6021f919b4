"""The media side of a sipp call for tests that need real RTP: a tone sender that keeps the level of what comes
back (`RtpPeer`), and a sipp call to a gateway whose SDP offers that peer (`media_call`)."""

from __future__ import annotations

import math
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from media.g711 import ulaw_decode, ulaw_encode
from tests.integration.peers import Gateway, ack, free_port, invite, reply
from tests.integration.test_trunks import BYE, PCMU, scenario


class RtpPeer:
    """The media side of a sipp call: sends a 1 kHz PCMU tone every 20 ms from its own socket and keeps the level
    of each packet that comes back."""

    TONE = ulaw_encode((8000 * np.sin(2 * math.pi * 1000 * np.arange(160) / 8000)).astype("<i2").tobytes())

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.ssrc = 0x5EC0A11
        self.heard: list[tuple[float, float]] = []
        self.remote: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._send, self._recv)]

    def start(self, remote: tuple[str, int]) -> None:
        self.remote = remote
        for t in self._threads:
            t.start()

    def _send(self) -> None:
        seq, t0 = 0, time.monotonic()
        while not self._stop.is_set():
            head = bytes([0x80, 0]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big") + \
                self.ssrc.to_bytes(4, "big")
            assert self.remote is not None
            self.sock.sendto(head + self.TONE, self.remote)
            seq = (seq + 1) % 65536
            time.sleep(max(0.0, t0 + seq * 0.02 - time.monotonic()))

    def _recv(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) == 172 and data[1] & 0x7F == 0:
                pcm = np.frombuffer(ulaw_decode(data[12:]), dtype="<i2").astype(np.float64)
                power = np.abs(np.fft.rfft(pcm)) ** 2
                tone = power[20] / max(power.sum(), 1e-9)  # bin 20 of 160 samples at 8 kHz: 1 kHz
                self.heard.append((time.monotonic(), float(np.sqrt(np.mean(pcm**2))) if tone > 0.8 else 0.0))

    def echoes(self, since: float, packets: int = 25) -> bool:
        """Whether `packets` packets of our tone (1 kHz holding most of the power, level above 1000) came back
        since `since` (echoed noise does not count)."""
        return sum(1 for t, level in list(self.heard) if t >= since and level > 1000) >= packets

    def wait_echo(self, since: float, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.echoes(since):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(2)
        self.sock.close()


def media_call(gw: Gateway, workdir: Path, name: str, peer: RtpPeer, hold_ms: int,
               bye_in: bool = False) -> subprocess.Popen[str]:
    """A sipp call to echo whose SDP offers `peer`'s port; sipp writes the port of the gateway's SDP answer to
    `name`.port (its logs are written at exit). With `bye_in` a BYE from the gateway side within `hold_ms` is
    answered and noted in `name`.bye (sipp's Unix time of it); else sipp sends its own BYE after `hold_ms`."""
    sdp = PCMU.replace("[media_ip]", "127.0.0.1").replace("[media_port]", str(peer.port))
    answer = ('<action><ereg regexp=".*" search_in="hdr" header="To:" assign_to="to"/>'
              '<ereg regexp="m=audio ([0-9]+)" search_in="body" check_it="true" assign_to="m,rtpport"/>'
              f'<exec command="echo RTPPORT [$rtpport] > {name}.port"/></action>')
    (workdir / f"{name}.xml").write_text(scenario(
        f'{invite(sdp)}  <recv response="200" rrs="true">{answer}</recv>\n{ack(200)}{hold(name, hold_ms, bye_in)}'
        f'{BYE}  <label id="end"/>\n  <Reference variables="m"/>\n'))
    return subprocess.Popen(["sipp", "-nostdin", "-m", "1", "-l", "1", "-sf", f"{name}.xml", "-s", "echo",
                             "-p", str(free_port()),
                             f"127.0.0.1:{gw.port}"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def hold(name: str, hold_ms: int, bye_in: bool) -> str:
    """sipp scenario lines: wait `hold_ms`; with `bye_in`, answer a BYE that comes meanwhile, write the time of it
    to `name`.bye and end the call (label "end")."""
    if not bye_in:
        return f'  <pause milliseconds="{hold_ms}"/>\n'
    note = f'<action><exec command="date +%s.%N > {name}.bye"/></action>'
    answer = reply("200 OK", attrs='next="end"')
    return (f'  <recv request="BYE" timeout="{hold_ms}" ontimeout="hangup">{note}</recv>\n'
            f'{answer}  <label id="hangup"/>\n')



def answer_port(log: Path, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"RTPPORT (\d+)", log.read_text() if log.exists() else "")
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError(f"sipp wrote no SDP answer port within {timeout} s")
