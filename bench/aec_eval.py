"""Echo canceller and noise suppressor before the barge-in detector, on the labelled clip set (issue #10).

Four variants run the clip set (tests/clipset.py) through the real detector: the detector alone, libspeexdsp's
canceller before it, RNNoise before it, and both (bench/aec_filters.py). Per variant: echo return loss enhancement
(ERLE: inbound energy over filtered energy, on the echo clips' frames where the echo stands 10 dB over the line noise)
in each second of the agent's turn and once converged (from 4 s on), the filter's CPU per 20 ms frame (thread time),
and the clip set's own scores (reaction p50/p95, false pauses and stops on echo, stops on backchannels).
The clip set's echo is the agent's audio delayed and attenuated, linear and sample-exact: the easiest echo a
canceller can meet (a phone leg adds codecs, level changes and clock drift).

Usage: python -m bench.aec_eval   (a third of the echo clips; AEC_EVAL_FULL=1 runs all 72)
Prints a table and writes bench/results/aec.json.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.aec_filters import Chain, InboundFilter, RNNoiseSuppressor, SpeexCanceller
from media.frames import FRAME_SAMPLES
from tests import clipset

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS: dict[str, Callable[[], InboundFilter] | None] = {
    "detector alone": None,
    "speex AEC + detector": SpeexCanceller,
    "speex AEC without residual suppressor + detector": lambda: SpeexCanceller(residual=False),
    "RNNoise + detector": RNNoiseSuppressor,
    "speex AEC + RNNoise + detector": lambda: Chain(SpeexCanceller(), RNNoiseSuppressor()),
}
CONVERGED_FROM_S = 4.0
ECHO_OVER_NOISE_DB = 10.0
LSB_FLOOR = float(FRAME_SAMPLES)
"""A frame's energy at one least significant bit RMS (-90 dBFS): a filter that outputs digital silence has removed
everything the 16-bit frame could hold, so ERLE stops there."""


@dataclass
class Metered:
    """Wraps a filter (or none) and records each frame's energy in and out and the filter's thread CPU time."""

    inner: InboundFilter | None
    e_in: list[float] = field(default_factory=list)
    e_out: list[float] = field(default_factory=list)
    cpu_ns: list[int] = field(default_factory=list)

    def __call__(self, played: np.ndarray, inbound: np.ndarray) -> np.ndarray:
        out = inbound
        if self.inner is not None:
            t = time.thread_time_ns()
            out = self.inner(played, inbound)
            self.cpu_ns.append(time.thread_time_ns() - t)
        self.e_in.append(float(np.dot(inbound, inbound)))
        self.e_out.append(float(np.dot(out, out)))
        return out


def _echo_frames(m: Metered) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Energy in, energy out (floored at one LSB) and the frames where the echo stands out of the line noise."""
    e_in, e_out = np.asarray(m.e_in), np.asarray(m.e_out) + LSB_FLOOR
    db = 10 * np.log10(e_in + 1e-9)
    return e_in, e_out, db > float(np.percentile(db, 10)) + ECHO_OVER_NOISE_DB  # the 10th percentile: noise only


def _erle(e_in: np.ndarray, e_out: np.ndarray, mask: np.ndarray) -> float | None:
    return float(10 * np.log10(e_in[mask].sum() / e_out[mask].sum())) if mask.sum() >= 5 else None


def erle_by_second(m: Metered) -> list[float | None]:
    """ERLE (dB) in each second of one echo clip."""
    e_in, e_out, mask = _echo_frames(m)
    return [_erle(e_in[s : s + 50], e_out[s : s + 50], mask[s : s + 50]) for s in range(0, e_in.size, 50)]


def erle_converged(m: Metered) -> float | None:
    """ERLE (dB) of one echo clip from CONVERGED_FROM_S on."""
    e_in, e_out, mask = _echo_frames(m)
    k = int(CONVERGED_FROM_S * 50)
    return _erle(e_in[k:], e_out[k:], mask[k:])


def default_specs(full: bool) -> list[clipset.ClipSpec]:
    """Every clip, or every interruption and backchannel with a third of the echo clips (one loss per agent turn
    and delay, the losses taken in turn)."""
    specs = clipset.clip_specs()
    if full:
        return specs
    echo = [c for c in specs if c.kind == "echo"]
    keep = {id(c) for j, c in enumerate(echo) if (j + j // len(clipset.ECHO_LOSS_DB)) % len(clipset.ECHO_LOSS_DB) == 0}
    return [c for c in specs if c.kind != "echo" or id(c) in keep]


def evaluate_variant(make: Callable[[], InboundFilter] | None, specs: list[clipset.ClipSpec]) -> dict[str, Any]:
    """The clip set's scores with `make()` before the detector, plus ERLE over time and CPU per frame."""
    meters: list[tuple[clipset.ClipSpec, Metered]] = []

    def factory(spec: clipset.ClipSpec) -> Metered:
        m = Metered(make() if make is not None else None)
        meters.append((spec, m))
        return m

    row: dict[str, Any] = dict(clipset.evaluate(specs=specs, inbound_filter=factory).row())
    echo = [m for s, m in meters if s.kind == "echo"]
    seconds = min(len(m.e_in) for m in echo) // 50
    by_s = [erle_by_second(m) for m in echo]
    row["erle_db_by_second_p50"] = [_median([b[s] for b in by_s]) for s in range(seconds)]
    row["erle_first_second_db_p50"] = row["erle_db_by_second_p50"][0]
    conv = [c for c in (erle_converged(m) for m in echo) if c is not None]
    row["erle_converged_db_p50"] = _median(conv)
    row["erle_converged_db_min"] = round(min(conv), 1) if conv else None
    cpu = np.concatenate([np.asarray(m.cpu_ns, dtype=np.float64) for _, m in meters]) / 1e3
    row["cpu_us_per_frame_p50"] = round(float(np.median(cpu)), 1) if cpu.size else 0.0
    row["cpu_us_per_frame_p95"] = round(float(np.percentile(cpu, 95)), 1) if cpu.size else 0.0
    return row


def _median(xs: Sequence[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return round(float(np.median(v)), 1) + 0.0 if v else None  # + 0.0: no "-0.0"


def _fmt(x: Any) -> str:
    return "-" if x is None else str(x)


def main() -> None:
    full = os.environ.get("AEC_EVAL_FULL") == "1"
    specs = default_specs(full)
    t0, load = time.monotonic(), os.getloadavg()[0]
    rows = []
    for name, make in VARIANTS.items():
        rows.append({"variant": name, **evaluate_variant(make, specs)})
    print(f"\n{len(specs)} clips ({sum(c.kind == 'echo' for c in specs)} echo), {time.monotonic() - t0:.0f} s, "
          f"load average {load:.1f} at the start")
    head = ("variant", "ERLE 1st s", "ERLE conv.", "CPU us p50/p95", "reaction p50/p95 ms", "missed",
            "echo pauses/stops", "backch. stops")
    print(" | ".join(head))
    for r in rows:
        print(" | ".join((
            r["variant"], _fmt(r["erle_first_second_db_p50"]), _fmt(r["erle_converged_db_p50"]),
            f"{r['cpu_us_per_frame_p50']}/{r['cpu_us_per_frame_p95']}",
            f"{r['reaction_p50_ms']}/{r['reaction_p95_ms']}", f"{r['missed']}/{r['interrupt_calls']}",
            f"{r['echo_false_pauses']}/{r['echo_false_stops']} of {r['echo_calls']}",
            f"{r['backchannel_stops']} of {r['backchannel_calls']}")))
    print("ERLE dB p50 by second of the agent's turn:")
    for r in rows:
        print(f"  {r['variant']}: {[_fmt(x) for x in r['erle_db_by_second_p50']]}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "aec.json"
    out.write_text(json.dumps({"full": full, "clips": len(specs), "load_average_at_start": round(load, 2),
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
