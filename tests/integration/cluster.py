"""`voicegate serve --workers N` as a test peer, and sipp callers that hold calls through it."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.integration.peers import Gateway, free_port, rtp_range, spawn_gateway


def free_block(n: int) -> int:
    """The first of `n` consecutive ports free for UDP on loopback."""
    for _ in range(100):
        base = free_port()
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def cluster_config(port: int, workers: dict[str, Any], **overrides: Any) -> str:
    lo, hi = rtp_range(40)
    cfg: dict[str, Any] = {
        "sip": {"listen": "127.0.0.1", "port": port, "transports": ["udp"]},
        "rtp": {"port_min": lo, "port_max": hi},
        "agents": {"echo": {"type": "echo"}},
        "routes": [{"match": "*", "agent": "echo"}],
        "records": {"enabled": False},
        "timeouts": {"shutdown_grace_s": 10},
        "workers": workers,
        **overrides,
    }
    return yaml.safe_dump(cfg)


def start_cluster(config_text: str, tmp: Path, port: int, workers: int, timeout: float = 60.0,
                  front_door: bool = False) -> Gateway:
    """Start `voicegate serve --workers N`; return once every worker and (N > 1 or `front_door`) the front door
    answer."""
    gw = spawn_gateway(config_text, tmp, port, "--workers", str(workers))
    try:
        for i in range(workers):
            gw.wait_event("gateway_ready", timeout, worker=i)
        if workers > 1 or front_door:
            gw.wait_event("frontdoor_ready", timeout)
    except AssertionError:
        gw.stop()
        raise
    return gw


def stop_all(*gws: Gateway, timeout: float = 30.0) -> list[int | None]:
    """SIGTERM every one at once (each takes seconds to drain), then wait; one still running after `timeout` is
    killed and reported as None."""
    for gw in gws:
        if gw.proc.poll() is None:
            gw.proc.send_signal(signal.SIGTERM)
    rcs: list[int | None] = []
    deadline = time.monotonic() + timeout
    for gw in gws:
        try:
            rcs.append(gw.proc.wait(max(deadline - time.monotonic(), 0.1)))
        except subprocess.TimeoutExpired:
            gw.proc.kill()
            gw.proc.wait(5)
            rcs.append(None)
    return rcs


def sipp_calls(port: int, cwd: Path, calls: int, hold_ms: int, service: str = "echo") -> subprocess.Popen[str]:
    """sipp's built-in UAC: `calls` calls at once, each held `hold_ms` and ended with BYE (no RTP)."""
    return subprocess.Popen(
        ["sipp", "-nostdin", "-sn", "uac", "-s", service, f"127.0.0.1:{port}", "-m", str(calls), "-l", str(calls),
         "-r", "50", "-d", str(hold_ms), "-p", str(free_port()), "-mp", str(rtp_range(10)[0]), "-timeout", "40s",
         "-trace_stat", "-fd", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def expect_reply(port: int, cwd: Path, code: int, check: str = "") -> float:
    """Send one INVITE; assert the final reply is `code` (and its message matches the regex `check`); return how
    long it took, in seconds."""
    action = (f'<action><ereg regexp="{check}" search_in="msg" check_it="true" assign_to="x"/></action>'
              if check else "")
    scenario = cwd / f"expect{code}.xml"
    scenario.write_text(f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="expect {code}">
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: sip:sipp@[local_ip]:[local_port]
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="100" optional="true"/>
  <recv response="{code}">{action}</recv>
{'  <Reference variables="x"/>' if check else ''}
</scenario>
""")
    t0 = time.monotonic()
    r = subprocess.run(["sipp", "-nostdin", "-sf", str(scenario), "-s", "echo", f"127.0.0.1:{port}", "-m", "1",
                        "-p", str(free_port()), "-timeout", "15s"], capture_output=True, text=True, timeout=30, cwd=cwd)
    took = time.monotonic() - t0
    assert r.returncode == 0, f"expected {code} {check}\n{r.stdout[-2000:]}\n{r.stderr[-1000:]}"
    return took


def answered_by(gw: Gateway, call_ids: set[str] | None = None) -> dict[str, int]:
    """Call-ID -> worker index of each answered call."""
    return {e["call"]: e["worker"] for e in gw.events("call_answered") if call_ids is None or e["call"] in call_ids}


def wait_answered(gw: Gateway, before: int, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = gw.events("call_answered")[before:]
        if len(got) >= count:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{count} calls not answered within {timeout}s:\n" + "\n".join(gw.lines[-30:]))
