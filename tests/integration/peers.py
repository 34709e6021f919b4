"""Real peers for the integration tests: the voicegate process, the pjsua2 test caller, sipp."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A port free for both UDP and TCP on loopback."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free port")


def _rtp_space() -> tuple[int, int]:
    """Ports for the tests' RTP outside the kernel's ephemeral range, so that no socket bound to port 0 (a gateway's
    SIP port from `free_port`, an HTTP client) takes one from under a peer: sipp failed in CI with "Unable to bind
    video RTP socket ... Address already in use" when its block lay in 32768-60999. Above 21000, clear of the
    shipped config's 20000-20999."""
    try:
        eph_lo, eph_hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        eph_lo, eph_hi = 32768, 60999
    below, above = (21000, eph_lo - 1), (eph_hi + 1, 65535)
    return max(below, above, key=lambda r: r[1] - r[0])


_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_WORKERS = 3
_SPACE = _rtp_space()
_RTP_SPAN = (_SPACE[1] - _SPACE[0] + 1) // _WORKERS
_RTP_LO = _SPACE[0] + (_WORKER % _WORKERS) * _RTP_SPAN
"""Each pytest-xdist worker (make test runs three) gets a third of the space."""
_rtp_next = [_RTP_LO + (os.getpid() * 200) % (_RTP_SPAN - 200)]
_rtp_lock = threading.Lock()


def rtp_range(size: int = 40, avoid: Sequence[tuple[int, int]] = ()) -> tuple[int, int]:
    """A block of RTP ports for one peer; blocks wrap within this worker's third of `_rtp_space()`. `avoid`: blocks
    still in use (a gateway's range while callers come and go), which a wrapped block must not overlap: a caller
    bound in a worker's range left that worker no port for its calls' RTP (bench/load.py's 503s)."""
    with _rtp_lock:
        for _ in range(2 * len(avoid) + 2):
            if _rtp_next[0] + size > _RTP_LO + _RTP_SPAN:
                _rtp_next[0] = _RTP_LO
            lo = _rtp_next[0]
            _rtp_next[0] += size
            hit = [hi for a_lo, hi in avoid if lo <= hi and lo + size - 1 >= a_lo]
            if not hit:
                return lo, lo + size - 1
            _rtp_next[0] = max(hit) + 1  # the next try starts past the block in use
    raise RuntimeError(f"no block of {size} RTP ports outside {list(avoid)}")


LONG_PROMPT = (
    "This is a long message, so that you can try interrupting me. Voicegate listens while it speaks. "
    "When you start talking it stops at once, and when you only say something short it carries on where it "
    "paused. Most voice agents on the phone keep talking over their callers, or stop for their own echo."
)


EARLY_ANNOUNCEMENT = "This call is answered by an AI assistant."
AGENT_KEYS = "1#9"
"""What the `keys` agent sends once a call is up."""


def gateway_config(port: int, **overrides: object) -> str:
    """The shipped voicegate.yaml, on test ports, with a `long` agent and no default route."""
    cfg = yaml.safe_load((ROOT / "voicegate.yaml").read_text())
    lo, hi = rtp_range(40)
    cfg["sip"] = {"listen": "127.0.0.1", "port": port}
    cfg["rtp"] = {"port_min": lo, "port_max": hi}
    cfg["timeouts"] = {"silence_reprompt_s": 30, "silence_hangup_s": 60, "shutdown_grace_s": 2}
    cfg.pop("transports", None)  # fixed ports: a test that wants a transport passes transports= on its own ports
    cfg["agents"]["long"] = {
        "type": "scripted",
        "start": "talk",
        "nodes": {"talk": [{"say": LONG_PROMPT}, {"pause_s": 3}, {"hangup": "done"}]},
    }
    cfg["agents"]["xfer"] = {
        "type": "scripted",
        "voice": "en",
        "start": "a",
        "nodes": {"a": [{"say": "Transferring you."}, {"transfer": "sip:operator@example.com"},
                        {"say": "Sorry, the transfer failed."}, {"hangup": "transfer_failed"}]},
    }
    cfg["agents"]["keys"] = {  # keys out, as the route's dtmf_mode says (test_call_control.py)
        "type": "scripted",
        "start": "a",
        "nodes": {"a": [{"pause_s": 0.3}, {"dtmf": AGENT_KEYS}, {"pause_s": 2}, {"hangup": "keys_sent"}]},
    }
    cfg["routes"] = [
        {"match": "keys4733", "agent": "keys"},
        {"match": "keysinfo", "agent": "keys", "dtmf_mode": "info"},
        {"match": "xfer", "agent": "xfer"},
        {"match": "echo", "agent": "echo"},
        {"match": "long", "agent": "long"},
        {"match": "early", "agent": "long", "announcement": {"text": EARLY_ANNOUNCEMENT, "early_media": True}},
        {"match": "assistant", "agent": "assistant"},
        {"match": "/^demo$|^100$/", "agent": "demo"},
    ]
    for k, v in overrides.items():
        cfg[k] = v
    return yaml.safe_dump(cfg)


class LogLines:
    """The lines a process writes to a pipe, read by a thread (so the pipe never fills and blocks the writer) and by
    `sync()`, which takes whatever is in the pipe at once: after it, every line written before the call is in
    `lines`. A test that reads the log as soon as its peer got the gateway's reply (a 403 logged, then sent) saw it
    without that line when only the thread read: the thread had not run yet (CI, twice)."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._fd = os.dup(stream.fileno())  # ours alone, closed at its end: never a number reused by another file
        stream.close()
        os.set_blocking(self._fd, False)
        self._lock = threading.Lock()
        self._partial = b""
        self._eof = False
        threading.Thread(target=self._pump, daemon=True).start()

    def sync(self) -> list[str]:
        with self._lock:
            while not self._eof:
                try:
                    chunk = os.read(self._fd, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    self._eof = True
                    os.close(self._fd)
                    chunk = b"\n" if self._partial else b""
                *done, self._partial = (self._partial + chunk).split(b"\n")
                self.lines.extend(d.decode(errors="replace") for d in done)
        return self.lines

    def _pump(self) -> None:
        while not self._eof:
            try:
                select.select([self._fd], [], [], 0.5)
            except OSError:
                continue  # `sync()` in another thread reached the end and closed it
            self.sync()


@dataclass
class Gateway:
    proc: subprocess.Popen[str]
    port: int
    config: Path
    log: LogLines

    @property
    def lines(self) -> list[str]:
        return self.log.lines

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in list(self.log.sync()):
            if line.startswith("{"):
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if name is None or ev.get("event") == name:
                    out.append(ev)
        return out

    def wait_event(self, name: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events(name):
                if all(ev.get(k) == v for k, v in match.items()):
                    return ev
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {name} {match} within {timeout}s; log tail:\n" + "\n".join(self.lines[-30:]))

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"voicegate did not stop within {timeout:.0f} s of SIGTERM") from None


def spawn_gateway(config_text: str, tmp: Path, port: int, *serve_args: str, prefix: Sequence[str] = ()) -> Gateway:
    """`voicegate serve` on `config_text` (written into `tmp`), its log lines collected in `Gateway.lines`;
    `prefix` runs it through another command (such as `ip netns exec NS`)."""
    cfg = tmp / "voicegate.yaml"
    cfg.write_text(config_text)
    proc = subprocess.Popen(
        [*prefix, str(VENV_BIN / "voicegate"), "serve", "--config", str(cfg), *serve_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp,
    )
    return Gateway(proc, port, cfg, LogLines(proc.stderr))


def start_gateway(config_text: str, tmp: Path, port: int, ready_timeout: float = 90.0,
                  prefix: Sequence[str] = ()) -> Gateway:
    gw = spawn_gateway(config_text, tmp, port, prefix=prefix)
    try:
        gw.wait_event("gateway_ready", ready_timeout)
    except AssertionError:
        gw.stop()
        raise
    return gw


def call(uri: str, *args: str, timeout: float = 60.0) -> dict[str, Any]:
    """Run the pjsua2 test caller; returns its JSON result."""
    lo, _ = rtp_range(100)
    proc = subprocess.run(
        [sys.executable, "-m", "telephony.simulator.caller", uri, "--rtp-port", str(lo), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"caller failed rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return dict(json.loads(lines[-1]))


def sipp(args: list[str], cwd: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    pcap = cwd / "pcap"
    if not pcap.exists():
        pcap.symlink_to("/usr/share/sip-tester")
    return subprocess.run(["sipp", "-nostdin", "-m", "1", "-l", "1", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def invite(sdp: str, headers: Sequence[str] = ()) -> str:
    """sipp scenario lines: send an INVITE carrying `sdp` and `headers`, take its provisional responses."""
    body = "\n".join(line.strip() for line in sdp.strip().splitlines())
    extra = "".join(f"{h}\n" for h in headers)
    return f"""  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: sip:sipp@[local_ip]:[local_port]
Max-Forwards: 70
{extra}Content-Type: application/sdp
Content-Length: [len]

{body}
]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
"""


def ack(status: int) -> str:
    """sipp scenario lines: ACK the INVITE's final `status`, in its transaction for an error and in a new one for
    a 2xx (RFC 3261 17.1.1.3, 13.2.2.4)."""
    via = "[last_Via:]" if status >= 300 else "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]"
    return f"""  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
{via}
[last_From:]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Contact: sip:sipp@[local_ip]:[local_port]
Max-Forwards: 70
Content-Length: 0

]]></send>
"""


def bye(cseq: int = 2, uri: str = "[next_url]", rport: bool = False, routes: bool = False) -> str:
    """sipp scenario lines: BYE the call (to `uri`, in-dialog; `routes` adds the record-routed route set, `rport`
    asks for the reply at the source port) and expect its 200."""
    via = "Via: SIP/2.0/[transport] [local_ip]:[local_port];" + ("rport;" if rport else "") + "branch=[branch]"
    lines = [f"BYE {uri} SIP/2.0", via, "[last_From:]", "[last_To:]", *(["[routes]"] if routes else []),
             "Call-ID: [call_id]", f"CSeq: {cseq} BYE", "Max-Forwards: 70", "Content-Length: 0", ""]
    body = "\n".join(lines)
    return f'  <send retrans="500"><![CDATA[\n{body}\n]]></send>\n  <recv response="200"/>\n'


def reply(status: str, headers: Sequence[str] = (), sdp: str = "", tag: bool = False, attrs: str = "") -> str:
    """sipp scenario lines: answer the request just received with `status` ("200 OK"), echoing its Via, From, To,
    Call-ID and CSeq; `tag` adds sipp's To tag (a UAS's first answer), `headers` and an `sdp` body follow, `attrs`
    go on the <send> element (e.g. 'retrans="500"')."""
    to = "[last_To:]" + (";tag=[pid]SIPpTag01[call_number]" if tag else "")
    lines = ["[last_Via:]", "[last_From:]", to, "[last_Call-ID:]", "[last_CSeq:]", *headers]
    if sdp:
        lines += ["Content-Type: application/sdp", "Content-Length: [len]", "", sdp.strip()]
    else:
        lines += ["Content-Length: 0", ""]
    body = "\n".join(lines)
    return f"  <send{' ' + attrs if attrs else ''}><![CDATA[\nSIP/2.0 {status}\n{body}\n]]></send>\n"


def invite_scenario(sdp: str, expect: int) -> str:
    """A sipp UAC scenario: INVITE carrying `sdp`, expect final status `expect`, ACK it."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="invite expecting {expect}">
{invite(sdp)}  <recv response="{expect}"/>
{ack(expect)}</scenario>
"""


def baresip(uri: str, wav: Path, workdir: Path, seconds: float = 10.0, mediaenc: str = "") -> tuple[Path, Path]:
    """Call `uri` with baresip speaking `wav` (16 kHz mono; the call ends when it does); returns the WAVs baresip
    recorded of what it sent and what it heard (its sndfile module). `mediaenc`: baresip's media encryption for
    the call, e.g. `srtp-mand` (SDES keys)."""
    conf = workdir / "baresip"
    conf.mkdir(exist_ok=True)
    lo, hi = rtp_range(20)
    (conf / "config").write_text(
        "\n".join([
            "poll_method epoll",
            f"sip_listen 127.0.0.1:{free_port()}",
            "audio_player alsa,null",
            "audio_alert alsa,null",
            f"audio_source aufile,{wav}",
            "audio_srate 16000",
            "audio_channels 1",
            f"rtp_ports {lo}-{hi}",
            "module_path /usr/lib/baresip/modules",
            *(f"module {m}.so" for m in ("g711", "g722", "aufile", "alsa", "sndfile", *(["srtp"] if mediaenc else []))),
            "module_app account.so",
            "module_app menu.so",
            f"snd_path {conf}",
        ]) + "\n"
    )
    (conf / "accounts").write_text(f"<sip:baresip@127.0.0.1>;regint=0{';mediaenc=' + mediaenc if mediaenc else ''}\n")
    proc = subprocess.run(["baresip", "-f", str(conf), "-e", f"/dial {uri}", "-t", str(int(seconds))],
                          capture_output=True, text=True, timeout=seconds + 20, cwd=conf)
    enc = sorted(conf.glob("dump-*-enc.wav"))
    dec = sorted(conf.glob("dump-*-dec.wav"))
    if not enc or not dec:
        raise AssertionError(f"baresip recorded nothing:\n{proc.stdout[-3000:]}\n{proc.stderr[-1000:]}")
    return enc[-1], dec[-1]
