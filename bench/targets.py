"""Issue #10's targets, checked against the results bench/run.py writes (foundation.json's shape): a pure function
of the results dict, one verdict per target whose figures are in it.

- reaction: p95 <= 100 ms over >= 20 calls, on the loopback line. The impaired line's reaction is reported beside
  it, not judged: the issue sets its targets on loopback and asks for "the same figures on an impaired line ...
  reported beside the clean ones", and that line's own delay is in the figure (the relay holds each packet 0-40 ms
  each way, and both ends' jitter buffers deepen for it: the phone's from 20-33 to 31-36 ms, measured);
- echo-only callers: 0 of >= 20 calls paused or stopped (a pause for echo is an audible gap of the agent's), on both
  lines: jitter and loss excuse no stop for our own echo;
- backchannel callers: <= 1 of >= 20 calls stopped (pauses are expected there and reported, not judged), both lines;
- echo round trip added by voicegate over `sipp -rtp_echo` on the same caller: <= 60 ms;
- CPU per echo call-second: <= 1.5x the bare pjsua2 bridge echo.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MIN_CALLS = 20
REACTION_P95_MS = 100.0
ECHO_FALSE_BARGE_INS = 0
BACKCHANNEL_STOPS = 1
ROUND_TRIP_ADDED_MS = 60.0
CPU_RATIO = 1.5


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    passed: bool


def _reaction(r: Mapping[str, Any]) -> Verdict:
    p95, n = float(r["p95_ms"]), int(r["n"])
    ok = n >= MIN_CALLS and not math.isnan(p95) and p95 <= REACTION_P95_MS
    return Verdict(f"p95 <= {REACTION_P95_MS:g} ms, n >= {MIN_CALLS}", f"p95 {p95:g} ms, n={n}", ok)


def _echo_only(fs: Mapping[str, Any]) -> Verdict:
    n, paused, stopped = int(fs["echo_calls"]), int(fs["echo_calls_paused"]), int(fs["echo_calls_stopped"])
    ok = n >= MIN_CALLS and max(paused, stopped) <= ECHO_FALSE_BARGE_INS
    return Verdict(f"{ECHO_FALSE_BARGE_INS} of >= {MIN_CALLS}", f"{paused} paused, {stopped} stopped of {n}", ok)


def _backchannel(fs: Mapping[str, Any]) -> Verdict:
    n, stopped = int(fs["backchannel_calls"]), int(fs["backchannel_calls_stopped"])
    ok = n >= MIN_CALLS and stopped <= BACKCHANNEL_STOPS
    return Verdict(f"<= {BACKCHANNEL_STOPS} of >= {MIN_CALLS}", f"{stopped} of {n}", ok)


def _round_trip(e: Mapping[str, Any]) -> Verdict:
    added = float(e["added_ms"])
    return Verdict(f"<= {ROUND_TRIP_ADDED_MS:g} ms", f"{added:g} ms",
                   not math.isnan(added) and added <= ROUND_TRIP_ADDED_MS)


def _cpu(c: Mapping[str, Any]) -> Verdict:
    ratio = float(c["ratio"])
    return Verdict(f"<= {CPU_RATIO:g}x", f"{ratio:g}x", not math.isnan(ratio) and ratio <= CPU_RATIO)


def verdicts(results: Mapping[str, Any]) -> dict[str, Verdict]:
    """One verdict per target whose section is in `results`, keyed `section` or `section.part`: `barge_in`,
    `wire_false_stops.echo_only`, `wire_false_stops.backchannel` (and the same under
    `wire_false_stops_impaired`), `echo_round_trip`, `cpu_per_call_second`."""
    out: dict[str, Verdict] = {}
    if "barge_in" in results:
        out["barge_in"] = _reaction(results["barge_in"])
    for section in ("wire_false_stops", "wire_false_stops_impaired"):
        if section in results:
            out[f"{section}.echo_only"] = _echo_only(results[section])
            out[f"{section}.backchannel"] = _backchannel(results[section])
    if "echo_round_trip" in results:
        out["echo_round_trip"] = _round_trip(results["echo_round_trip"])
    if "cpu_per_call_second" in results:
        out["cpu_per_call_second"] = _cpu(results["cpu_per_call_second"])
    return out
