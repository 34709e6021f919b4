"""`make soak`: the call soak. `voicegate serve --workers N` (behind its Kamailio front door, call records on)
takes echo calls from `voicegate simulate` at a steady concurrency for a while, each caller speaking so that audio
flows both ways, a new call replacing each that ends (`simulate --duration`).

It passes when every simulated call passed its script, the gateway wrote exactly one call record per call the
simulator made (matched by SIP Call-ID, none extra), no worker restarted, and no worker's RSS grew by more than
SOAK_RSS_GROWTH_MB from idle before the first call to the end. RTP loss and the media clock's tick p99 of every
call are summarised from the records. Prints a table and writes bench/results/soak.json.

Settings from the environment: SOAK_S (seconds during which calls start, default 600), SOAK_C (concurrent calls;
default 80% of `max_concurrent_echo_calls` in bench/results/load.json, else 6), SOAK_CALL_S (seconds each call
lasts after its speech came back, default 15), SOAK_RSS_GROWTH_MB (default 48), SOAK_WORKERS (default the workers
the load maximum was measured with, else 2), SOAK_KEEP=1 (keep the run's folder and print its path: the gateway's
call records and SIP trace of every call in `records/`, each failed call's phone-side SIP messages and pjsua log in
`phone-trace/`, the simulator's report and output, the gateway's event log).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import config_rtp
from bench.run import RESULTS
from telephony.records import read_records
from tests.integration.cluster import cluster_config, free_block, start_cluster
from tests.integration.peers import ROOT, VENV_BIN, Gateway, free_port, rtp_range

DEFAULT_WORKERS = 2
DEFAULT_C = 6
DEFAULT_RSS_GROWTH_MB = 48.0
PJ_LOG = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} ")
"""A pjsua log line (the simulator's phones print a few at start) among simulate's summary lines."""

SCRIPT = """\
name: soak echo call
steps:
  - say: "testing one two three, the quick brown fox jumps over the lazy dog"
    wait: false
  - wait_speech: {{timeout_s: 5}}
  - wait: {seconds}
  - hangup: {{}}
"""
"""The caller speaks; the echo agent's first audio back passes `wait_speech` (a call without media fails)."""


def default_concurrency(load_json: Path = RESULTS / "load.json") -> int:
    """80% of the measured load maximum (bench/load.py), at least 1; DEFAULT_C when it was not measured."""
    try:
        best = int(json.loads(load_json.read_text())["max_concurrent_echo_calls"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_C
    return max(1, math.floor(0.8 * best)) if best > 0 else DEFAULT_C


def default_workers(load_json: Path = RESULTS / "load.json") -> int:
    """The worker count the load maximum was measured with: 80% of 14 calls does not fit in 2 workers' 8 slots."""
    try:
        return max(1, int(json.loads(load_json.read_text())["workers"]))
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_WORKERS


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"process {pid} has no VmRSS")


def worker_pids(gw: Gateway) -> dict[int, int]:
    """Worker index -> pid of its latest start."""
    return {int(e["worker"]): int(e["pid"]) for e in gw.events("worker_started")}


def _pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 2) if xs else None


def summarise(reports: list[dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Calls placed and passed, how the records match the simulator's Call-IDs, and loss and tick p99 per call
    from the records."""
    made = [str(r.get("call_id") or "") for r in reports]
    counts: dict[str, int] = {}
    for rec in records:
        counts[str(rec.get("call"))] = counts.get(str(rec.get("call")), 0) + 1
    mine = [rec for rec in records if str(rec.get("call")) in set(made)]
    loss = [float(rec[k]) for rec in mine for k in ("rx_loss_pct", "tx_loss_pct")
            if isinstance(rec.get(k), int | float)]
    loss = loss or [float(rec["rtp"][k]) for rec in mine if isinstance(rec.get("rtp"), dict)
                    for k in ("rx_loss_pct", "tx_loss_pct") if isinstance(rec["rtp"].get(k), int | float)]
    ticks = [float(rec["tick_p99_ms"]) for rec in mine if isinstance(rec.get("tick_p99_ms"), int | float)]
    return {
        "calls": len(reports), "passed": sum(bool(r.get("passed")) for r in reports),
        "failed": [{"call_id": r.get("call_id"), "status": r.get("status"), "error": r.get("error"),
                    "steps": [s for s in r.get("steps", []) if not s.get("ok")]}
                   for r in reports if not r.get("passed")],
        "without_call_id": sum(not c for c in made),
        "records": len(records),
        "calls_without_record": sorted(c for c in made if c and counts.get(c, 0) == 0),
        "calls_with_several_records": sorted(c for c in made if counts.get(c, 0) > 1),
        "records_of_other_calls": sorted(c for c in counts if c not in set(made)),
        "calls_with_tick": len(ticks),
        "loss_pct": {"p50": _pct(loss, 50), "p99": _pct(loss, 99), "max": max(loss, default=None)},
        "tick_p99_ms": {"p50": _pct(ticks, 50), "p99": _pct(ticks, 99), "max": max(ticks, default=None)},
        "call_s": _pct([float(r.get("duration_s") or 0.0) for r in reports], 50),
    }


def verdict(summary: dict[str, Any], rss: dict[str, dict[str, int]], restarts: int, growth_mb: float) -> list[str]:
    """What failed ([] when the soak passed)."""
    out = []
    if not summary["calls"]:
        out.append("the simulator made no call")
    if summary["passed"] < summary["calls"]:
        out.append(f"{summary['calls'] - summary['passed']} of {summary['calls']} calls failed")
    if summary["without_call_id"]:
        out.append(f"{summary['without_call_id']} calls have no Call-ID")
    for key, what in (("calls_without_record", "calls without a call record"),
                      ("calls_with_several_records", "calls with more than one record"),
                      ("records_of_other_calls", "records of calls the simulator did not make")):
        if summary[key]:
            out.append(f"{len(summary[key])} {what}: {', '.join(summary[key][:3])}")
    if restarts:
        out.append(f"{restarts} worker restart(s)")
    for worker, m in rss.items():
        grew = (m["end_kb"] - m["start_kb"]) / 1024
        if grew > growth_mb:
            out.append(f"worker {worker} RSS grew {grew:.1f} MB (bound {growth_mb:g} MB)")
    return out


def run_soak(concurrency: int, seconds: float, call_s: float, tmp: Path,
             growth_mb: float = DEFAULT_RSS_GROWTH_MB, workers: int = DEFAULT_WORKERS,
             trace: bool = False) -> dict[str, Any]:
    """One soak against a fresh `serve --workers N`; the result (`fails` lists what failed). `trace`: the gateway
    writes every call's SIP trace beside the records, the simulator each failed call's into `tmp/phone-trace`."""
    port = free_port()
    db = tmp / "records" / "calls.db"
    text = cluster_config(port, {"count": workers, "first_port": free_block(workers)},
                          records={"enabled": True, "path": str(db), "sip_trace": trace})
    phones = rtp_range(200 * math.ceil(concurrency / 4), avoid=[config_rtp(text)])[0]  # not in a worker's range
    gw = start_cluster(text, tmp, port, workers)
    try:
        pids = worker_pids(gw)
        started = len(gw.events("worker_started"))
        rss = {str(w): {"start_kb": rss_kb(p), "peak_kb": 0, "end_kb": 0} for w, p in pids.items()}
        samples: list[dict[str, Any]] = []
        """Every worker's RSS every 10 s (kB), to tell a warm-up from a steady growth in a long run."""
        script = tmp / "soak.yaml"
        script.write_text(SCRIPT.format(seconds=call_s))
        out = tmp / "soak-report.json"
        bound = concurrency * (math.ceil(seconds / call_s) + 2)
        cmd = [str(VENV_BIN / "voicegate"), "simulate", str(script), "--target", f"sip:echo@127.0.0.1:{port}",
               "--calls", str(bound), "--concurrency", str(concurrency), "--rate", str(max(2, concurrency)),
               "--duration", str(seconds), "--rtp-port", str(phones), "--json", str(out),
               *(["--sip-trace", str(tmp / "phone-trace")] if trace else [])]
        t0 = time.monotonic()
        with (tmp / "simulate.out").open("w") as so, (tmp / "simulate.err").open("w") as se:
            sim = subprocess.Popen(cmd, stdout=so, stderr=se, text=True, cwd=ROOT)
        while sim.poll() is None and time.monotonic() - t0 < seconds + call_s + 120:
            now = {str(w): rss_kb(p) for w, p in pids.items()}
            for w, kb in now.items():
                rss[w]["peak_kb"] = max(rss[w]["peak_kb"], kb)
            if not samples or time.monotonic() - t0 >= samples[-1]["t_s"] + 10:
                samples.append({"t_s": round(time.monotonic() - t0), **now})
            time.sleep(1.0)
        if sim.poll() is None:
            sim.kill()
        sim.wait(30)
        stdout, stderr = (tmp / "simulate.out").read_text(), (tmp / "simulate.err").read_text()
        elapsed = time.monotonic() - t0
        reports: list[dict[str, Any]] = json.loads(out.read_text()) if out.exists() else []
        ids = {r["call_id"] for r in reports if r.get("call_id")}
        deadline = time.monotonic() + 20  # a record is written once the call's agent has stopped
        records: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            records = read_records(db)[0] if db.exists() else []
            if ids <= {str(r.get("call")) for r in records}:
                break
            time.sleep(0.2)
        for worker, p in pids.items():
            m = rss[str(worker)]
            m["end_kb"] = rss_kb(p)
            m["peak_kb"] = max(m["peak_kb"], m["end_kb"])
        restarts = len(gw.events("worker_started")) - started
    finally:
        gw.stop(60)
        if trace:
            (tmp / "gateway.log").write_text("\n".join(gw.lines) + "\n")
    summary = summarise(reports, records)
    fails = verdict(summary, rss, restarts, growth_mb)
    if not reports:
        fails.append(f"simulate wrote no report (exit {sim.returncode}): {stderr[-500:]}")
    return {"concurrency": concurrency, "seconds": seconds, "call_s": call_s, "elapsed_s": round(elapsed, 1),
            "workers": workers, **summary, "rss": rss, "rss_samples_kb": samples, "rss_growth_bound_mb": growth_mb,
            "worker_restarts": restarts,
            "simulate_summary": [ln for ln in stdout.splitlines() if not PJ_LOG.match(ln)][-12:], "fails": fails}


def table(res: dict[str, Any]) -> list[str]:
    loss, tick = res["loss_pct"], res["tick_p99_ms"]
    rows = [("concurrent calls / workers", f"{res['concurrency']} / {res['workers']}"),
            ("calls started within / run took", f"{res['seconds']:g} s / {res['elapsed_s']:g} s"),
            ("calls placed / passed", f"{res['calls']} / {res['passed']}"),
            ("call records / calls without one / duplicated / extra",
             f"{res['records']} / {len(res['calls_without_record'])} / {len(res['calls_with_several_records'])} / "
             f"{len(res['records_of_other_calls'])}"),
            ("RTP loss per call and way, p50 / p99 / max (%)", f"{loss['p50']} / {loss['p99']} / {loss['max']}"),
            (f"tick p99 per call, p50 / p99 / max (ms; {res['calls_with_tick']} calls)",
             f"{tick['p50']} / {tick['p99']} / {tick['max']}")]
    rows += [(f"worker {w} RSS start / peak / end (MB)",
              f"{m['start_kb'] / 1024:.1f} / {m['peak_kb'] / 1024:.1f} / {m['end_kb'] / 1024:.1f}")
             for w, m in res["rss"].items()]
    rows.append(("verdict", "; ".join(res["fails"]) or "ok"))
    width = max(len(k) for k, _ in rows)
    return [f"{k:<{width}}  {v}" for k, v in rows]


def main() -> int:
    seconds = float(os.environ.get("SOAK_S", "600"))
    concurrency = int(os.environ.get("SOAK_C") or default_concurrency())
    call_s = float(os.environ.get("SOAK_CALL_S", "15"))
    growth = float(os.environ.get("SOAK_RSS_GROWTH_MB", str(DEFAULT_RSS_GROWTH_MB)))
    workers = int(os.environ.get("SOAK_WORKERS") or default_workers())
    print(f"call soak: {concurrency} concurrent echo calls of about {call_s:g} s for {seconds:g} s "
          f"through {workers} workers ...", flush=True)
    keep = os.environ.get("SOAK_KEEP", "") not in ("", "0")
    tmp = Path(tempfile.mkdtemp(prefix="voicegate-soak-"))
    try:
        res = run_soak(concurrency, seconds, call_s, tmp, growth, workers, trace=keep)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(table(res)))
    if keep:
        print(f"kept the run's folder: {tmp}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"bench": "soak", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, **res}
    (RESULTS / "soak.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'soak.json'}")
    return 1 if res["fails"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
