"""`make bench`: the load figure, the most concurrent echo calls voicegate serves on this machine with RTP loss
under 0.1% (either way, as the simulated callers' RTP statistics count it) and the media clock's tick p99 less than
5 ms above its nominal 20 ms (every call's `tick_p99_ms` in voicegate's `call_end`).

voicegate runs as `serve --workers BENCH_LOAD_WORKERS` (default 5, behind its Kamailio front door; 1: a single
process, which serves at most 4 calls). Concurrency steps up from BENCH_LOAD_MIN (default 1) by BENCH_LOAD_STEP
(default 1) and stops at the first step that fails, or at BENCH_LOAD_MAX (default every worker slot, 4 a worker):
bounded in calls and time. A run that stops at the cap without a failing step did not find the machine's limit:
the figure is then a lower bound (`capped` in the JSON, "at least" in the table). BENCH_LOAD_CALLER picks the callers:
- `simulate`: `voicegate simulate --calls C --concurrency C` (all C calls at once, BENCH_LOAD_S seconds each), up
  to 4 calls per pjsua2 phone process, on the same cores as the gateway; loss either way as the callers' RTP
  statistics count it.
- `sipp`: one sipp process places the C calls, each streaming G.711 (`rtp_stream`, a looped tone) for BENCH_LOAD_S
  seconds; loss is what the gateway's call records say it received (sipp sends no RTCP, so the other way is not
  known), which costs the callers far less CPU.
Each step also takes the workers' CPU per call-second, and `sipp -rtp_echo` (sipp's own RTP echo) answers the same
step (with simulate's callers) for the side-by-side CPU figure. Prints a table and writes
bench/results/load.json.

The callers' RTP ports are one block for the whole run, outside the gateway's range: a block taken per step wrapped
around the tests' port span onto the workers' range, a caller then held a worker's RTP ports, its calls failed
("Address already in use") and, with every other worker full, the front door answered 503.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.run import RESULTS, _cpu_s
from media.g711 import ulaw_encode
from telephony.records import read_records
from tests.integration.cluster import cluster_config, free_block, start_cluster
from tests.integration.peers import (
    VENV_BIN,
    Gateway,
    ack,
    bye,
    free_port,
    gateway_config,
    invite,
    rtp_range,
    start_gateway,
)
from tests.integration.test_trunks import scenario

MAX_LOSS_PCT = 0.1
MAX_TICK_P99_MS = 25.0
"""5 ms of jitter above the nominal 20 ms tick."""

SCRIPT = """\
name: load echo call
steps:
  - say: "testing one two three, the quick brown fox jumps over the lazy dog"
    wait: false
  - wait: {seconds}
  - hangup: {{}}
"""


SIPP_SDP = """v=0
o=sipp 1 1 IN IP4 [local_ip]
s=-
c=IN IP4 [local_ip]
t=0 0
m=audio [rtpstream_audio_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000"""
SIPP_BYE = bye(routes=True)


def sipp_scenario(seconds: float, audio: Path) -> str:
    """A sipp UAC call that streams `audio` (raw µ-law, looped) from the answer for `seconds`, then hangs up."""
    return scenario(f'''{invite(SIPP_SDP)}  <recv response="200" rrs="true"/>
{ack(200)}  <nop><action><exec rtp_stream="{audio},-1,0"/></action></nop>
  <pause milliseconds="{int(seconds * 1000)}"/>
{SIPP_BYE}''')


def tone_ulaw(seconds: float = 2.0) -> bytes:
    """A 440 Hz tone at -12 dBFS in µ-law 8 kHz, for sipp to loop."""
    n = int(seconds * 8000)
    pcm = b"".join(int(8200 * math.sin(2 * math.pi * 440 * i / 8000)).to_bytes(2, "little", signed=True)
                   for i in range(n))
    return ulaw_encode(pcm)


def step_verdict(reports: list[dict[str, Any]], ticks_p99: list[float], calls: int) -> str:
    """Why a step fails the load criteria ('' when it passes)."""
    answered = [r for r in reports if r.get("status") == 200 and r.get("rtp")]
    if len(answered) < calls:
        codes = sorted({r.get("status") for r in reports if r.get("status") != 200})
        return f"{calls - len(answered)} of {calls} calls not answered with media (SIP {codes})"
    losses = [r["rtp"][k] for r in answered for k in ("rx_loss_pct", "tx_loss_pct") if r["rtp"].get(k) is not None]
    if max(losses, default=0.0) >= MAX_LOSS_PCT:
        return f"RTP loss {max(losses):g}% >= {MAX_LOSS_PCT}%"
    if len(ticks_p99) < calls:
        return f"voicegate logged call_end with tick figures for {len(ticks_p99)} of {calls} calls"
    if max(ticks_p99) >= MAX_TICK_P99_MS:
        return f"tick p99 {max(ticks_p99):g} ms >= {MAX_TICK_P99_MS:g} ms"
    return ""


def config_rtp(config_text: str) -> tuple[int, int]:
    """The gateway's RTP port range in a config."""
    rtp = yaml.safe_load(config_text)["rtp"]
    return int(rtp["port_min"]), int(rtp["port_max"])


def caller_ports(top: int, gateway: tuple[int, int]) -> tuple[int, int]:
    """First RTP port of the simulated callers' block (simulate's phones of 4 calls sit 200 ports apart) and of
    sipp's echo, for every step up to `top` calls, both outside the gateway's range."""
    callers = rtp_range(200 * max(1, math.ceil(top / 4)), avoid=[gateway])
    return callers[0], rtp_range(4 * top + 4, avoid=[gateway, callers])[0]


def run_step(uri: str, calls: int, seconds: float, tmp: Path, lo: int) -> list[dict[str, Any]]:
    script = tmp / "echo.yaml"
    script.write_text(SCRIPT.format(seconds=seconds))
    out = tmp / f"load-{calls}.json"
    subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(script), "--target", uri, "--calls", str(calls),
                    "--concurrency", str(calls), "--rate", "50", "--rtp-port", str(lo), "--json", str(out)],
                   capture_output=True, text=True, timeout=seconds + 120)
    return list(json.loads(out.read_text())) if out.exists() else []


def media_pids(gw: Gateway) -> list[int]:
    """The processes that carry the calls' media: the workers, or the single gateway process."""
    workers = {e["worker"]: e["pid"] for e in gw.events("worker_started")}
    return list(workers.values()) or [gw.proc.pid]


def gateway_step(gw: Gateway, calls: int, seconds: float, tmp: Path, rtp_lo: int) -> dict[str, Any]:
    before = len(gw.events("call_end"))
    pids = media_pids(gw)
    c0 = sum(_cpu_s(p) for p in pids)
    reports = run_step(f"sip:echo@127.0.0.1:{gw.port}", calls, seconds, tmp, rtp_lo)
    cpu = sum(_cpu_s(p) for p in pids) - c0
    deadline = time.monotonic() + 10
    while len(gw.events("call_end")) < before + calls and time.monotonic() < deadline:
        time.sleep(0.1)
    ticks = [float(e["tick_p99_ms"]) for e in gw.events("call_end")[before:] if "tick_p99_ms" in e]
    call_s = sum(r.get("duration_s", 0.0) for r in reports if r.get("status") == 200)
    losses = [r["rtp"][k] for r in reports if r.get("rtp") for k in ("rx_loss_pct", "tx_loss_pct")
              if r["rtp"].get(k) is not None]
    return {"calls": calls, "answered": sum(r.get("status") == 200 for r in reports),
            "max_loss_pct": max(losses, default=None), "tick_p99_max_ms": max(ticks, default=None),
            "cpu_ms_per_call_s": round(cpu * 1000 / call_s, 2) if call_s else None,
            "fails": step_verdict(reports, ticks, calls)}


def sipp_caller_step(gw: Gateway, calls: int, seconds: float, tmp: Path, rtp_lo: int) -> dict[str, Any]:
    """One step with sipp as the C callers; loss and tick p99 from the gateway's call records of the step."""
    audio = tmp / "tone.ul"
    if not audio.exists():
        audio.write_bytes(tone_ulaw())
    (tmp / "stream.xml").write_text(sipp_scenario(seconds, audio))
    before = {e["call"] for e in gw.events("call_end")}
    pids = media_pids(gw)
    c0 = sum(_cpu_s(p) for p in pids)
    sipp = subprocess.run(["sipp", "-nostdin", "-sf", "stream.xml", "-s", "echo", f"127.0.0.1:{gw.port}", "-p",
                           str(free_port()), "-mp", str(rtp_lo), "-m", str(calls), "-l",
                           str(calls), "-r", str(calls), "-rp", "1000", "-timeout", str(int(seconds + 60))],
                          capture_output=True, text=True, cwd=tmp, timeout=seconds + 90)
    cpu = sum(_cpu_s(p) for p in pids) - c0
    deadline = time.monotonic() + 10
    while len({e["call"] for e in gw.events("call_end")} - before) < calls and time.monotonic() < deadline:
        time.sleep(0.1)
    ids = {e["call"] for e in gw.events("call_end")} - before
    db = gw.config.parent / "records" / "calls.db"
    records = [r for r in read_records(db)[0] if r.get("call") in ids] if db.exists() else []
    reports = [{"status": 200, "rtp": r.get("rtp") or None} for r in records]  # a record: the call was answered
    reports += [{"status": 0}] * max(0, calls - len(records))  # no record: never answered
    ticks = [float(r["tick_p99_ms"]) for r in records if r.get("tick_p99_ms") is not None]
    call_s = sum(float(r.get("duration_s") or 0.0) for r in records)
    losses = [r["rtp"]["rx_loss_pct"] for r in records if (r.get("rtp") or {}).get("rx_loss_pct") is not None]
    return {"calls": calls, "answered": len(records), "max_loss_pct": max(losses, default=None),
            "tick_p99_max_ms": max(ticks, default=None),
            "cpu_ms_per_call_s": round(cpu * 1000 / call_s, 2) if call_s else None,
            "fails": step_verdict(reports, ticks, calls) or ("" if sipp.returncode == 0 else
                                                              f"sipp: {sipp.stderr.strip()[-300:]}")}


def sipp_step(calls: int, seconds: float, tmp: Path, rtp_lo: int, echo_lo: int) -> float | None:
    """CPU of `sipp -rtp_echo` per call-second for the same step (ms); the callers' RTP from `rtp_lo`, sipp's
    from `echo_lo`."""
    port = free_port()
    sipp = subprocess.Popen(["sipp", "-sn", "uas", "-rtp_echo", "-i", "127.0.0.1", "-p", str(port), "-mp",
                             str(echo_lo), "-nostdin", "-m", str(calls), "-timeout", str(seconds + 60)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    try:
        time.sleep(0.5)
        c0 = _cpu_s(sipp.pid)
        reports = run_step(f"sip:echo@127.0.0.1:{port}", calls, seconds, tmp, rtp_lo)
        cpu = _cpu_s(sipp.pid) - c0
        call_s = sum(r.get("duration_s", 0.0) for r in reports if r.get("status") == 200)
        return round(cpu * 1000 / call_s, 2) if call_s else None
    finally:
        sipp.kill()
        sipp.wait(10)


def main() -> int:
    workers = int(os.environ.get("BENCH_LOAD_WORKERS", "5"))
    top = int(os.environ.get("BENCH_LOAD_MAX") or 4 * workers)
    first = int(os.environ.get("BENCH_LOAD_MIN", "1"))
    stride = int(os.environ.get("BENCH_LOAD_STEP", "1"))
    seconds = float(os.environ.get("BENCH_LOAD_S", "8"))
    caller = os.environ.get("BENCH_LOAD_CALLER", "simulate")
    if caller not in ("simulate", "sipp"):
        raise SystemExit(f"BENCH_LOAD_CALLER must be simulate or sipp, not {caller!r}")
    steps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        text = (cluster_config(port, {"count": workers, "first_port": free_block(workers)}, records={"enabled": True})
                if workers > 1 else gateway_config(port))
        rtp_lo, echo_lo = caller_ports(top, config_rtp(text))
        gw = start_cluster(text, tmp, port, workers) if workers > 1 else start_gateway(text, tmp, port)
        try:
            for calls in range(first, top + 1, stride):
                print(f"load step: {calls} concurrent echo calls ...", flush=True)
                if caller == "sipp":
                    step = sipp_caller_step(gw, calls, seconds, tmp, echo_lo)
                    step["sipp_rtp_echo_cpu_ms_per_call_s"] = None
                else:
                    step = gateway_step(gw, calls, seconds, tmp, rtp_lo)
                    step["sipp_rtp_echo_cpu_ms_per_call_s"] = sipp_step(calls, seconds, tmp, rtp_lo, echo_lo)
                steps.append(step)
                if step["fails"]:
                    break
        finally:
            gw.stop()
    passed = [s["calls"] for s in steps if not s["fails"]]
    best = max(passed, default=0)
    capped = bool(steps) and not steps[-1]["fails"]
    print()
    print(f"{'calls':>5}  {'answered':>8}  {'max loss %':>10}  {'tick p99 ms':>11}  {'CPU ms/call-s':>13}  "
          f"{'sipp CPU':>8}  verdict")
    for s in steps:
        print(f"{s['calls']:>5}  {s['answered']:>8}  {s['max_loss_pct']!s:>10}  {s['tick_p99_max_ms']!s:>11}  "
              f"{s['cpu_ms_per_call_s']!s:>13}  {s['sipp_rtp_echo_cpu_ms_per_call_s']!s:>8}  {s['fails'] or 'ok'}")
    print(f"\nload figure ({caller} callers): {'at least ' if capped else ''}{best} concurrent echo calls at "
          f"{workers} worker(s) "
          f"(RTP loss < {MAX_LOSS_PCT}%, tick p99 < {MAX_TICK_P99_MS:g} ms)"
          + (f"; no step up to {steps[-1]['calls']} failed, so the limit is higher" if capped else ""))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"bench": "load", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "call_seconds": seconds,
           "workers": workers, "caller": caller,
           "max_concurrent_echo_calls": best, "capped": capped, "criteria": {"max_loss_pct": MAX_LOSS_PCT,
                                                           "max_tick_p99_ms": MAX_TICK_P99_MS}, "steps": steps}
    (RESULTS / "load.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'load.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
