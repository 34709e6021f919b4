"""Call records (CDRs): one row per finished call in SQLite, for the PBX admin (`voicegate calls`) and for billing.

`call_record` builds a record (the `call_end` event's fields plus start time, caller, called, the agent's type, its
backend mix, usage, cost and turn latency); `cdr` flattens it into the columns of the `calls` table (which also keeps
the whole record as JSON); `RecordWriter` inserts a call's row when it is answered (`status` in_progress, the
worker's `pid`) and completes it at the end; `close_open` completes the open rows of a worker that died (the
supervisor's side). `read_records`, `newest`, `totals`, `table` and `write_csv` are the reading side.
`read_records` still reads the JSON-lines files of older versions.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

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


CDR_COLUMNS = ("call", "start", "end", "caller", "caller_number", "called", "trunk", "agent", "agent_type",
               "duration_s", "reason", "sip_code", "sip_reason", "hangup_side", "backends", "cost", "currency",
               "turn_p50_ms", "turn_p95_ms", "barge_ins", "dtmf_count", "rx_loss_pct", "tx_loss_pct", "rx_jitter_ms",
               "rtt_ms", "r_factor", "mos")
"""The columns of a CDR, in the `calls` table and in `voicegate calls --csv`."""

STATE_COLUMNS = ("status", "pid")
"""`in_progress` or `ended`, and the pid of the process that answered the call (rows of a dead worker are closed)."""
IN_PROGRESS, ENDED = "in_progress", "ended"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS calls (
  id INTEGER PRIMARY KEY, start_ts REAL NOT NULL, {", ".join(f'"{c}"' for c in CDR_COLUMNS)}, record TEXT NOT NULL
);
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS calls_start ON calls (start_ts);
CREATE INDEX IF NOT EXISTS calls_caller ON calls (caller_number);
CREATE INDEX IF NOT EXISTS calls_open ON calls (pid) WHERE status = 'in_progress';
"""
_GATEWAY_ENDS = frozenset({"shutdown", "rtp_timeout", "max_call_length", "caller_silence", "worker_died"})


def hangup_side(reason: str) -> str:
    """Who ended the call: `caller`, `gateway` (a timer or shutdown), `transfer`, or `agent`."""
    if reason.startswith("remote_"):
        return "caller"
    if reason in _GATEWAY_ENDS:
        return "gateway"
    return "transfer" if reason.startswith("transfer") else "agent"


def caller_number(uri: str) -> str:
    """The user part of a caller's URI (`"Alice" <sip:+4930123@pbx>` -> `+4930123`)."""
    return _user(uri)


def cdr(rec: Record) -> dict[str, Any]:
    """The CDR columns of a record."""
    start = _started(rec)
    duration = float(rec.get("duration_s") or 0.0)
    lat = rec.get("latency") or {}
    cost = rec.get("cost") or {}
    rtp = rec.get("rtp") or {}
    return {
        "call": rec.get("call"), "start": rec.get("start"),
        "end": datetime.fromtimestamp(start + duration).astimezone().isoformat(timespec="milliseconds"),
        "caller": rec.get("caller"), "caller_number": caller_number(str(rec.get("caller", ""))),
        "called": rec.get("called"), "trunk": rec.get("trunk"), "agent": rec.get("agent"),
        "agent_type": rec.get("agent_type"), "duration_s": duration, "reason": rec.get("reason"),
        "sip_code": rec.get("sip_code"), "sip_reason": rec.get("sip_reason"),
        "hangup_side": hangup_side(str(rec["reason"])) if rec.get("reason") else None,
        "backends": ";".join(f"{b}:{n}" for b, n in (rec.get("backends") or {}).items()),
        "cost": cost.get("total"), "currency": cost.get("currency"),
        "turn_p50_ms": lat.get("turn_p50_ms"), "turn_p95_ms": lat.get("turn_p95_ms"),
        "barge_ins": rec.get("barge_ins"), "dtmf_count": len(str(rec.get("digits") or "")),
        **{k: rtp.get(k) for k in ("rx_loss_pct", "tx_loss_pct", "rx_jitter_ms", "rtt_ms", "r_factor", "mos")},
    }


def connect(path: Path) -> sqlite3.Connection:
    """The records database at `path`, created (mode 0640: records name callers) with its table if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o640))
    db = sqlite3.connect(path, timeout=5.0, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")  # readers (voicegate calls) never block the writer; workers may share it
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    have = {str(row[1]) for row in db.execute("PRAGMA table_info(calls)")}
    for column in (*CDR_COLUMNS, *STATE_COLUMNS):  # a table made by an older version lacks the newer columns
        if column not in have:
            db.execute(f'ALTER TABLE calls ADD COLUMN "{column}"')
    db.executescript(INDEXES)
    return db


def open_record(call: str, start: float, caller: str, called: str, agent: str, agent_type: str) -> Record:
    """The record of a call just answered: what is known before it ends."""
    return {"call": call, "start": datetime.fromtimestamp(start).astimezone().isoformat(timespec="milliseconds"),
            "caller": caller, "called": called, "agent": agent, "agent_type": agent_type, "status": IN_PROGRESS}


def _row(record: Record, status: str) -> tuple[list[str], tuple[Any, ...]]:
    row = cdr(record)
    return (["start_ts", *row, "record", "status"],
            (_started(record), *row.values(), json.dumps(record, default=str, separators=(",", ":")), status))


class RecordWriter:
    """Writes records into the SQLite database at `path` (one autocommitted statement each): `start` inserts an
    in-progress row, `write` completes it (or inserts the record of a call that had none); a failure is logged,
    never raised."""

    def __init__(self, path: Path, log: Log) -> None:
        self.path = path
        self.log = log
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        """Call-ID -> rowid of its in-progress row."""

    def start(self, record: Record) -> None:
        cols, values = _row(record, IN_PROGRESS)
        cur = self._execute(record, f"INSERT INTO calls ({_names(cols)}, pid) VALUES ({_marks(values)}, ?)",
                            (*values, os.getpid()))
        if cur is not None and cur.lastrowid is not None:
            self._open[str(record["call"])] = cur.lastrowid

    def write(self, record: Record) -> None:
        cols, values = _row({**record, "status": ENDED}, ENDED)
        rowid = self._open.pop(str(record.get("call")), None)
        if rowid is None:
            self._execute(record, f"INSERT INTO calls ({_names(cols)}, pid) VALUES ({_marks(values)}, ?)",
                          (*values, os.getpid()))
        else:
            self._execute(record, f"UPDATE calls SET {_sets(cols)} WHERE id = ?", (*values, rowid))

    def _execute(self, record: Record, sql: str, values: tuple[Any, ...]) -> sqlite3.Cursor | None:
        try:
            with self._lock:
                if self._db is None:
                    self._db = connect(self.path)
                return self._db.execute(sql, values)
        except (OSError, sqlite3.Error) as e:
            why = (e.strerror or str(e)) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
            self.log("records_error", call=record.get("call"), path=str(self.path), error=why)
            return None


def _names(cols: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in cols)


def _sets(cols: Sequence[str]) -> str:
    return ", ".join(f'"{c}" = ?' for c in cols)


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def close_open(path: Path, pid: int, at: float, reason: str) -> list[str]:
    """End the in-progress rows that process `pid` left (it died): `reason`, the duration up to `at` (wall time).
    Returns their Call-IDs."""
    if not path.exists():
        return []
    db = connect(path)
    try:
        closed = []
        rows = db.execute("SELECT id, start_ts, record FROM calls WHERE status = ? AND pid = ?", (IN_PROGRESS, pid))
        for rowid, start_ts, text in rows.fetchall():
            rec = {**json.loads(text), "status": ENDED, "reason": reason,
                   "duration_s": round(max(0.0, at - float(start_ts)), 2)}
            cols, values = _row(rec, ENDED)
            db.execute(f"UPDATE calls SET {_sets(cols)} WHERE id = ?", (*values, rowid))
            closed.append(str(rec["call"]))
        return closed
    finally:
        db.close()


SQLITE_MAGIC = b"SQLite format 3\x00"


def read_records(path: Path) -> tuple[list[Record], list[str]]:
    """The records in start order, and a note naming each row (or JSON line, in a file of an older version) that
    is not one. An empty file holds no records; a missing one raises OSError."""
    with path.open("rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head == SQLITE_MAGIC:
        return _read_sqlite(path)
    return _read_jsonl(path) if head else ([], [])


def _read_sqlite(path: Path) -> tuple[list[Record], list[str]]:
    records: list[Record] = []
    bad: list[str] = []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'calls'").fetchone() is None:
            return [], []
        for rowid, text in db.execute("SELECT id, record FROM calls ORDER BY start_ts, id"):
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                bad.append(f"{path}: calls row {rowid}: record is not JSON ({e.msg})")
                continue
            records.append(rec)
    finally:
        db.close()
    return records, bad


def _read_jsonl(path: Path) -> tuple[list[Record], list[str]]:
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


def _open_existing(path: Path) -> sqlite3.Connection:
    with path.open("rb") as f:
        if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise OSError(f"{path} is not an SQLite records database (a JSON-lines file of an older version?)")
    return sqlite3.connect(path, timeout=5.0, isolation_level=None)


def erase_caller(path: Path, number: str) -> list[Record]:
    """Delete every record of the caller whose number (URI user part) is `number`; returns the deleted records."""
    db = _open_existing(path)
    try:
        rows = db.execute("DELETE FROM calls WHERE caller_number = ? RETURNING record", (number,)).fetchall()
    finally:
        db.close()
    return [json.loads(text) for (text,) in rows]


def purge(path: Path, before: float, expired: Callable[[str, float], bool]) -> list[Record]:
    """Delete the records of calls started before `before` (a Unix time) for which `expired(called, start)` holds,
    in one transaction; returns the deleted records."""
    db = _open_existing(path)
    try:
        db.execute("BEGIN IMMEDIATE")
        rows = db.execute("SELECT id, called, start_ts FROM calls WHERE start_ts < ?", (before,)).fetchall()
        ids = [(rowid,) for rowid, called, start in rows if expired(str(called), float(start))]
        out = [json.loads(text) for (rowid,) in ids
               for (text,) in db.execute("DELETE FROM calls WHERE id = ? RETURNING record", (rowid,))]
        db.execute("COMMIT")
    finally:
        db.close()
    return out


def write_csv(records: Sequence[Record], out: IO[str]) -> None:
    """The CDR columns of `records` as CSV with a header row."""
    w = csv.DictWriter(out, CDR_COLUMNS, lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow(cdr(rec))


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


def _mos(rec: Record) -> str:
    v = (rec.get("rtp") or {}).get("mos")
    return "-" if v is None else f"{float(v):.2f}"


def table(records: Sequence[Record]) -> list[str]:
    """Aligned text rows: a header, one row per record, and the totals line."""
    rows = [["start", "caller -> called", "agent", "duration", "reason", "backends", "cost", "turn p50/p95 ms", "MOS"]]
    for r in records:
        mix = ", ".join(b if n == 0 else f"{b} {n}" for b, n in (r.get("backends") or {}).items())
        lat = r.get("latency") or {}
        rows.append([
            r["start"][:19].replace("T", " "), f"{_user(str(r.get('caller', '')))} -> {r.get('called', '')}",
            str(r.get("agent", "")), _duration(float(r.get("duration_s") or 0.0)), str(r.get("reason", "")), mix,
            f"{_cost(r):.4f}", f"{_ms(lat.get('turn_p50_ms'))}/{_ms(lat.get('turn_p95_ms'))}", _mos(r),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {3, 6, 8}  # duration, cost, MOS

    def line(row: list[str]) -> str:
        cells = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        return "  ".join(cells).rstrip()

    lines = [line(row) for row in rows]
    t = totals(records)
    cur = f" {t['currency']}" if t["currency"] else ""
    per_min = "-" if t["cost_per_min"] is None else f"{t['cost_per_min']:.4f}"
    lines.append(f"{t['calls']} calls, {t['minutes']:.1f} min, cost {t['cost']:.4f}{cur}, {per_min}{cur}/min")
    return lines
