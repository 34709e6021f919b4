"""Call records: one JSON line per finished call, for the PBX admin (`voicegate calls`) and for billing.

`call_record` builds a line (the `call_end` event's fields plus start time, caller, called, the agent's type, its
backend mix, usage, cost and turn latency); `RecordWriter` appends it; `read_records`, `newest`, `totals` and `table`
are the reading side.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agents.cost import Prices, price

Record = dict[str, Any]
_USER = re.compile(r"(?:sips?|tel):([^@;>]+)")


class Log(Protocol):
    def __call__(self, name: str, **fields: object) -> None: ...


def turn_latency(turns: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """p50 / p95 of `first_audio_ms` over the turns that answered caller speech (not greetings, keys or tools)."""
    ms = [float(t["first_audio_ms"]) for t in turns
          if isinstance(t.get("first_audio_ms"), int | float) and t.get("trigger", "speech") == "speech"
          and not t.get("superseded")]
    if not ms:
        return {"turn_p50_ms": None, "turn_p95_ms": None}
    p50, p95 = np.percentile(ms, [50, 95])
    return {"turn_p50_ms": round(float(p50), 1), "turn_p95_ms": round(float(p95), 1)}


def backend_mix(turns: Sequence[Mapping[str, Any]], agent_type: str) -> dict[str, int]:
    """Turns per backend (a turn's `backend` or `engine`, else the agent's type); `{agent_type: 0}` with no turns."""
    mix: dict[str, int] = {}
    for t in turns:
        backend = str(t.get("backend") or t.get("engine") or agent_type)
        mix[backend] = mix.get(backend, 0) + 1
    return mix or {agent_type: 0}


def call_record(end: Mapping[str, Any], start: float, caller: str, called: str, agent_type: str,
                usage: Mapping[str, float], prices: Prices) -> Record:
    """The record line of a call: `end` holds the `call_end` event's fields; `start` is the INVITE's wall time."""
    turns: list[Mapping[str, Any]] = end.get("turns", [])
    head = {"call": end["call"], "start": datetime.fromtimestamp(start).astimezone().isoformat(timespec="milliseconds"),
            "caller": caller, "called": called, "agent": end["agent"], "agent_type": agent_type,
            "backends": backend_mix(turns, agent_type)}
    return {**head, **{k: v for k, v in end.items() if k not in head},
            "usage": {k: round(v, 3) for k, v in sorted(usage.items())},
            "cost": asdict(price(usage, float(end["duration_s"]), prices)), "latency": turn_latency(turns)}


class RecordWriter:
    """Appends records to a JSON-lines file with one write(2) each (O_APPEND: workers may share the file, and
    logrotate may move it); a failure is logged, never raised."""

    def __init__(self, path: Path, log: Log) -> None:
        self.path = path
        self.log = log

    def write(self, record: Record) -> None:
        data = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            self.log("records_error", call=record.get("call"), path=str(self.path), error=e.strerror or str(e))


def read_records(path: Path) -> tuple[list[Record], list[str]]:
    """The records in file order, and a `file:line: why` note for each line that is not one (a torn last line)."""
    records: list[Record] = []
    bad: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append(f"{path}:{n}: not JSON ({e.msg})")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("start"), str):
                bad.append(f"{path}:{n}: not a call record (no start time)")
                continue
            records.append(rec)
    return records, bad


def _started(rec: Record) -> float:
    try:
        return datetime.fromisoformat(rec["start"]).timestamp()
    except ValueError:
        return 0.0


def newest(records: Sequence[Record], last: int) -> list[Record]:
    """The `last` most recently started calls, newest first."""
    return sorted(records, key=_started, reverse=True)[:last]


def _cost(rec: Record) -> float:
    return float((rec.get("cost") or {}).get("total") or 0.0)


def totals(records: Sequence[Record]) -> dict[str, Any]:
    minutes = sum(float(r.get("duration_s") or 0.0) for r in records) / 60
    cost = sum(_cost(r) for r in records)
    currency = next((r["cost"]["currency"] for r in records if r.get("cost")), "")
    return {"calls": len(records), "minutes": round(minutes, 2), "cost": round(cost, 6), "currency": currency,
            "cost_per_min": round(cost / minutes, 6) if minutes else None}


def _user(uri: str) -> str:
    m = _USER.search(uri)
    return m.group(1) if m else uri


def _duration(s: float) -> str:
    m, sec = divmod(round(s), 60)
    return f"{m // 60}:{m % 60:02d}:{sec:02d}" if m >= 60 else f"{m}:{sec:02d}"


def _ms(v: Any) -> str:
    return "-" if v is None else f"{float(v):.0f}"


def table(records: Sequence[Record]) -> list[str]:
    """Aligned text rows: a header, one row per record, and the totals line."""
    rows = [["start", "caller -> called", "agent", "duration", "reason", "backends", "cost", "turn p50/p95 ms"]]
    for r in records:
        mix = ", ".join(b if n == 0 else f"{b} {n}" for b, n in (r.get("backends") or {}).items())
        lat = r.get("latency") or {}
        rows.append([
            r["start"][:19].replace("T", " "), f"{_user(str(r.get('caller', '')))} -> {r.get('called', '')}",
            str(r.get("agent", "")), _duration(float(r.get("duration_s") or 0.0)), str(r.get("reason", "")), mix,
            f"{_cost(r):.4f}", f"{_ms(lat.get('turn_p50_ms'))}/{_ms(lat.get('turn_p95_ms'))}",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {3, 6}  # duration, cost

    def line(row: list[str]) -> str:
        cells = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        return "  ".join(cells).rstrip()

    lines = [line(row) for row in rows]
    t = totals(records)
    cur = f" {t['currency']}" if t["currency"] else ""
    per_min = "-" if t["cost_per_min"] is None else f"{t['cost_per_min']:.4f}"
    lines.append(f"{t['calls']} calls, {t['minutes']:.1f} min, cost {t['cost']:.4f}{cur}, {per_min}{cur}/min")
    return lines
