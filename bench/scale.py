"""`make bench` rows for scale-out: `voicegate serve --workers 2` behind its Kamailio front door, on loopback.

- concurrent echo calls: 10 sipp `uac_pcap` callers at once (G.711 audio from a pcap, then a DTMF digit): how many
  were answered, how many refused, and how;
- CPU per echo call-second of the workers (and of Kamailio) vs `sipp -rtp_echo` answering the same 8 callers;
- memory per call: the workers' RSS during those calls minus idle, per call;
- failover after `kill -9` of a worker: when Kamailio marked it down, when the first new call got through, and the
  slowest call set-up meanwhile (workers config defaults: 2 s probes, 2 s INVITE timeout).
Prints a table and writes bench/results/scale.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.integration.cluster import cluster_config, free_block, start_cluster
from tests.integration.peers import ROOT, Gateway, free_port, rtp_range

RESULTS = ROOT / "bench" / "results"
CALLERS = 10


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _group(pid: int) -> list[int]:
    """Every process of `pid`'s process group (Kamailio forks its children into it)."""
    out = subprocess.run(["pgrep", "-g", str(os.getpgid(pid))], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _pcap_callers(port: int, cwd: Path, calls: int) -> subprocess.Popen[str]:
    pcap = cwd / "pcap"
    if not pcap.exists():
        pcap.symlink_to("/usr/share/sip-tester")
    return subprocess.Popen(["sipp", "-nostdin", "-sn", "uac_pcap", "-s", "echo", f"127.0.0.1:{port}", "-m",
                             str(calls), "-l", str(calls), "-r", "50", "-p", str(free_port()), "-mp",
                             str(rtp_range(4 * calls)[0]), "-timeout", "60s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def _worker_pids(gw: Gateway) -> list[int]:
    last: dict[int, int] = {}
    for e in gw.events("worker_started"):
        last[int(e["worker"])] = int(e["pid"])
    return [last[i] for i in sorted(last)]


def capacity(gw: Gateway, tmp: Path) -> dict[str, Any]:
    workers = _worker_pids(gw)
    kamailio = _group(int(gw.events("frontdoor_started")[-1]["pid"]))
    idle_rss = _rss_kb(workers)
    answered0, refused0 = len(gw.events("call_answered")), len(gw.events("call_refused"))
    cpu0, kam0, t0 = _cpu_s(workers), _cpu_s(kamailio), time.monotonic()
    callers = _pcap_callers(gw.port, tmp, CALLERS)
    time.sleep(4.0)
    busy_rss = _rss_kb(workers)
    callers.communicate(timeout=90)
    ends = [e for e in gw.events("call_end") if e["reason"] == "remote_200"][-8:]
    call_s = sum(float(e["duration_s"]) for e in ends)
    cpu, kam = _cpu_s(workers) - cpu0, _cpu_s(kamailio) - kam0
    answered = len(gw.events("call_answered")) - answered0
    front_refusals = [e for e in gw.events("frontdoor") if str(e["msg"]).startswith("full")]
    refused = len(gw.events("call_refused")) - refused0
    return {"callers": CALLERS, "answered": answered, "refused_by_workers_486": refused,
            "refused_at_front_door": len(front_refusals), "wall_s": round(time.monotonic() - t0, 1),
            "frames_in_min": min(int(e["frames_in"]) for e in ends),
            "worker_cpu_ms_per_call_s": round(cpu * 1000 / call_s, 2) if call_s else float("nan"),
            "kamailio_cpu_ms_per_call_s": round(kam * 1000 / call_s, 2) if call_s else float("nan"),
            "kamailio_processes": len(kamailio),
            "rss_per_call_kb": round((busy_rss - idle_rss) / max(answered, 1)), "idle_rss_kb": idle_rss}


def sipp_echo_cpu(tmp: Path, calls: int = 8) -> float:
    """CPU of `sipp -rtp_echo` per call-second, answering `calls` uac_pcap callers at once."""
    port = free_port()
    uas = subprocess.Popen(["sipp", "-nostdin", "-sn", "uas", "-rtp_echo", "-i", "127.0.0.1", "-p", str(port),
                            "-mp", str(rtp_range(4 * calls)[0])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    try:
        time.sleep(0.5)
        c0, t0 = _cpu_s([uas.pid]), time.monotonic()
        callers = _pcap_callers(port, tmp, calls)
        callers.communicate(timeout=90)
        wall = time.monotonic() - t0
        return round((_cpu_s([uas.pid]) - c0) * 1000 / (calls * wall), 3)
    finally:
        uas.terminate()
        uas.wait(10)


def failover(gw: Gateway, tmp: Path) -> dict[str, Any]:
    victim = _worker_pids(gw)[1]
    killed = time.time()
    os.kill(victim, signal.SIGKILL)
    first_ok, setups = None, []
    while time.time() - killed < 8:
        t = time.monotonic()
        r = subprocess.run(["sipp", "-nostdin", "-sn", "uac", "-s", "echo", f"127.0.0.1:{gw.port}", "-m", "1",
                            "-d", "100", "-p", str(free_port()), "-timeout", "15s"], capture_output=True, cwd=tmp)
        if r.returncode == 0:
            setups.append(time.monotonic() - t - 0.1)
            first_ok = first_ok or time.time()
        time.sleep(0.1)
    down = [e for e in gw.events("frontdoor") if "worker down" in str(e["msg"]) and e["ts"] >= killed]
    return {"marked_down_s": round(down[0]["ts"] - killed, 2) if down else float("nan"),
            "first_call_after_s": round(first_ok - killed, 2) if first_ok else float("nan"),
            "slowest_setup_s": round(max(setups), 2) if setups else float("nan"), "calls": len(setups)}


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        gw = start_cluster(cluster_config(port, {"count": 2, "first_port": free_block(2)},
                                          timeouts={"shutdown_grace_s": 5}), tmp, port, 2)
        try:
            print("10 echo callers with audio at 2 workers ...", flush=True)
            cap = capacity(gw, tmp)
            print("failover after kill -9 of a worker ...", flush=True)
            time.sleep(3.0)
            fo = failover(gw, tmp)
        finally:
            gw.stop(40)
        print("the same callers against sipp -rtp_echo ...", flush=True)
        sipp_ms = sipp_echo_cpu(tmp)
    rows = [
        ("concurrent echo calls, 2 workers", cap["answered"], f"of {CALLERS} callers; the rest refused at once "
                                                                f"({cap['refused_at_front_door']} at the front door)"),
        ("CPU per echo call-second, workers (ms)", cap["worker_cpu_ms_per_call_s"], "8 calls, G.711 from a pcap"),
        ("CPU per echo call-second, Kamailio (ms)", cap["kamailio_cpu_ms_per_call_s"], "signalling only"),
        ("CPU per echo call-second, sipp -rtp_echo (ms)", sipp_ms, "baseline, same callers, same run"),
        ("memory per call (kB RSS)", cap["rss_per_call_kb"], f"idle workers {cap['idle_rss_kb']} kB"),
        ("worker killed -> marked down (s)", fo["marked_down_s"], "OPTIONS probe or INVITE timeout"),
        ("worker killed -> next call through (s)", fo["first_call_after_s"], "target < 5"),
        ("slowest call set-up meanwhile (s)", fo["slowest_setup_s"], f"{fo['calls']} calls in 8 s"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'metric':<{width}}  {'value':>8}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value!s:>8}  {note}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps({"capacity": cap, "sipp_rtp_echo_ms": sipp_ms, "failover": fo},
                                                   indent=2))
    print(f"\nwrote {RESULTS / 'scale.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
