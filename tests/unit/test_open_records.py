"""A call's record row exists from its answer (in progress, with the worker's pid), is completed at its end, and the
rows a dead worker left open are ended by `close_open` with `worker_died` and the duration up to the death."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from telephony.records import RecordWriter, close_open, open_record, read_records


def rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return list(db.execute('SELECT "call", status, pid, reason, duration_s, hangup_side FROM calls ORDER BY id'))


def test_a_row_is_in_progress_from_the_answer_and_completed_at_the_end(tmp_path: Path) -> None:
    db, logged = tmp_path / "calls.db", []
    w = RecordWriter(db, lambda name, **f: logged.append(name))
    start = time.time()
    w.start(open_record("c1", start, "sip:alice@x", "echo", "echo", "echo"))
    assert rows(db) == [("c1", "in_progress", os.getpid(), None, 0.0, None)]
    assert read_records(db)[0][0]["status"] == "in_progress"
    w.write({**open_record("c1", start, "sip:alice@x", "echo", "echo", "echo"), "reason": "remote_200",
             "duration_s": 3.5})
    w.write({**open_record("c2", start, "sip:bob@x", "echo", "echo", "echo"), "reason": "remote_200",
             "duration_s": 1.0})  # a call that had no in-progress row gets one row too
    assert rows(db) == [("c1", "ended", os.getpid(), "remote_200", 3.5, "caller"),
                        ("c2", "ended", os.getpid(), "remote_200", 1.0, "caller")]
    assert [r["status"] for r in read_records(db)[0]] == ["ended", "ended"] and logged == []


def test_close_open_ends_only_the_dead_workers_open_rows(tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    w = RecordWriter(db, lambda name, **f: None)
    start = time.time() - 10
    for call in ("mine", "done"):
        w.start(open_record(call, start, "sip:a@x", "echo", "echo", "echo"))
    w.write({**open_record("done", start, "sip:a@x", "echo", "echo", "echo"), "reason": "remote_200",
             "duration_s": 2.0})
    with sqlite3.connect(db) as con:  # another worker's live call
        con.execute("INSERT INTO calls (start_ts, \"call\", status, pid, record) VALUES (?, 'other', 'in_progress', "
                    "?, '{}')", (start, os.getpid() + 1))
    assert close_open(db, os.getpid(), start + 7.25, "worker_died") == ["mine"]
    assert close_open(db, os.getpid(), start + 9, "worker_died") == []  # closed once
    assert rows(db)[0] == ("mine", "ended", os.getpid(), "worker_died", 7.25, "gateway")
    assert rows(db)[2][:2] == ("other", "in_progress")
    rec = next(r for r in read_records(db)[0] if r.get("call") == "mine")
    assert (rec["reason"], rec["duration_s"], rec["status"]) == ("worker_died", 7.25, "ended")
    assert close_open(tmp_path / "none.db", 1, 0.0, "worker_died") == []
