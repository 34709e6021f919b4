"""The hash-chained audit log, `voicegate audit verify` on tampered logs, and `voicegate erase --caller`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from agents.cost import Prices
from agents.eventlog import subscribe
from telephony.audit import AuditError, append, entry_hash, verify
from telephony.cli import main
from telephony.config import load_config
from telephony.purge_job import purge_every
from telephony.records import RecordWriter, call_record, read_records


def _log(tmp_path: Path, n: int = 4) -> Path:
    path = tmp_path / "audit.jsonl"
    for i in range(n):
        append(path, "erase", calls=[f"c{i}"], files_removed=0)
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(ln + "\n" for ln in lines))


def test_entries_chain_and_verify(tmp_path: Path) -> None:
    path = _log(tmp_path)
    entries = [json.loads(ln) for ln in _lines(path)]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4] and entries[0]["prev"] == "0" * 64
    assert all(b["prev"] == a["hash"] for a, b in zip(entries, entries[1:], strict=False))
    v = verify(path)
    assert v.ok and v.entries == 4 and v.head == entries[-1]["hash"]


@pytest.mark.parametrize(("tamper", "problem"), [
    (lambda ls: [ls[0], ls[1].replace('"c1"', '"cX"'), *ls[2:]], ":2: entry 2: its content was changed"),
    (lambda ls: [ls[0], *ls[2:]], ":2: entry 2: has seq 3: an entry before it was removed or moved"),
    (lambda ls: [ls[0], ls[2], ls[1], ls[3]], ":2: entry 2: has seq 3"),
    (lambda ls: [*ls[:3], ls[3][:-20]], ":4: entry 4: not an audit entry"),
    (lambda ls: [ls[0], ls[1], json.dumps({**json.loads(ls[2]), "prev": "0" * 64}), ls[3]],
     ":3: entry 3: prev does not match"),
])
def test_a_changed_removed_reordered_or_torn_entry_is_named(tmp_path: Path, tamper: Callable[[list[str]], list[str]],
                                                           problem: str) -> None:
    path = _log(tmp_path)
    _rewrite(path, tamper(_lines(path)))
    v = verify(path)
    assert not v.ok and problem in v.problem, v.problem
    assert v.problem.startswith(str(path))


def test_a_recomputed_hash_still_breaks_the_next_link(tmp_path: Path) -> None:
    path = _log(tmp_path)
    lines = _lines(path)
    forged = {**json.loads(lines[1]), "calls": ["cX"]}
    forged["hash"] = entry_hash(forged)
    _rewrite(path, [lines[0], json.dumps(forged), *lines[2:]])
    assert ":3: entry 3: prev does not match" in verify(path).problem


def test_append_refuses_a_damaged_tail(tmp_path: Path) -> None:
    path = _log(tmp_path, 2)
    with path.open("a") as f:
        f.write('{"seq": 3, "ha\n')
    with pytest.raises(AuditError, match="last entry is damaged"):
        append(path, "erase")


def test_audit_verify_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _log(tmp_path, 3)
    assert main(["audit", "verify", "--audit", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: 3 entries intact, head ")
    lines = _lines(path)
    _rewrite(path, [lines[0], lines[1].replace('"files_removed":0', '"files_removed":1'), lines[2]])
    assert main(["audit", "verify", "--audit", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"voicegate audit: {path}:2: entry 2: its content was changed (hash mismatch)"
    assert err[1].startswith(f"{path}: the first 1 entries are intact")
    assert main(["audit", "verify", "--audit", str(tmp_path / "none.jsonl")]) == 2


def _record(call: str, caller: str, recording: Path | None = None) -> dict[str, object]:
    end = {"call": call, "agent": "a", "reason": "remote_200", "sip_code": 200, "duration_s": 5.0, "turns": []}
    rec = call_record(end, 1_750_000_000.0, caller, "100", "echo", {}, Prices())
    if recording is not None:
        rec["recording"] = str(recording)
    return rec


def test_erase_removes_the_callers_records_and_recordings_and_audits_it(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    db, audit = tmp_path / "calls.db", tmp_path / "audit.jsonl"
    wav, pcap = tmp_path / "rec1.wav", tmp_path / "c3.pcap"
    wav.write_bytes(b"RIFF")
    pcap.write_bytes(b"\xd4\xc3\xb2\xa1")
    w = RecordWriter(db, lambda name, **f: None)
    for rec in (_record("c1", "<sip:+4930111@pbx>", wav), _record("c2", '"Bob" <sip:+4930222@pbx>'),
                {**_record("c3", "sip:+4930111@other"), "pcap": str(pcap)}):
        w.write(rec)
    assert main(["erase", "--caller", "+4930111", "--records", str(db), "--audit", str(audit),
                 "--reason", "GDPR request 17"]) == 0
    assert capsys.readouterr().out == "erased 2 call(s) and 2 file(s) of caller +4930111; audit entry 1\n"
    assert [r["call"] for r in read_records(db)[0]] == ["c2"] and not wav.exists() and not pcap.exists()
    [entry] = [json.loads(ln) for ln in _lines(audit)]
    assert entry["action"] == "erase" and entry["calls"] == ["c1", "c3"] and entry["files_removed"] == 2
    assert entry["caller_sha256"] == hashlib.sha256(b"+4930111").hexdigest() and "+4930111" not in audit.read_text()
    assert entry["reason"] == "GDPR request 17"
    assert main(["erase", "--caller", "+4930111", "--records", str(db), "--audit", str(audit)]) == 0
    assert "erased 0 call(s)" in capsys.readouterr().out
    assert verify(audit).entries == 2
    assert sqlite3.connect(db).execute("SELECT count(*) FROM calls").fetchone() == (1,)


def test_erase_names_a_records_file_it_cannot_erase_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "calls.jsonl"
    old.write_text("{}\n")
    assert main(["erase", "--caller", "1", "--records", str(old), "--audit", str(tmp_path / "a.jsonl")]) == 1
    assert "is not an SQLite records database" in capsys.readouterr().err
    assert not (tmp_path / "a.jsonl").exists()


def test_purge_deletes_calls_past_their_routes_retention_and_audits_it(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "vg.yaml"
    cfg.write_text("agents: {e: {type: echo}}\nrecords: {retention_days: 400}\n"
                   "routes:\n  - {match: short, agent: e, retention_days: 30}\n  - {match: '*', agent: e}\n")
    assert main(["purge", "--config", str(cfg)]) == 1  # no records yet: named, nothing done
    assert "cannot purge" in capsys.readouterr().err
    now, day = time.time(), 86400
    wav = tmp_path / "records/old.wav"
    wav.parent.mkdir()
    wav.write_bytes(b"RIFF")
    w = RecordWriter(tmp_path / "records/calls.db", lambda name, **f: None)
    for call, called, age_days in (("s100", "short", 100), ("s1", "short", 1), ("l100", "other", 100),
                                   ("l500", "other", 500)):
        end = {"call": call, "agent": "e", "reason": "agent", "sip_code": 200, "duration_s": 5.0, "turns": []}
        rec = call_record(end, now - age_days * day, "sip:1@x", called, "echo", {}, Prices())
        if call == "s100":
            rec["recording"] = str(wav)
        w.write(rec)
    assert main(["purge", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out == "purged 2 call(s) and 1 file(s); audit entry 1\n"
    assert sorted(r["call"] for r in read_records(tmp_path / "records/calls.db")[0]) == ["l100", "s1"]
    assert not wav.exists()
    [entry] = [json.loads(ln) for ln in _lines(tmp_path / "records/audit.jsonl")]
    assert entry["action"] == "purge" and sorted(entry["calls"]) == ["l500", "s100"]
    cfg.write_text("agents: {e: {type: echo}}\nroutes: [{match: '*', agent: e}]\n")
    assert main(["purge", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out == f"no retention_days set in {cfg}: nothing is purged\n"


def test_the_purge_job_runs_at_start_and_again_every_period(tmp_path: Path) -> None:
    cfg = tmp_path / "vg.yaml"
    cfg.write_text("agents: {e: {type: echo}}\nrecords: {retention_days: 30, purge_every_h: 0.0002}\n"
                   "routes: [{match: '*', agent: e}]\n")
    config = load_config(str(cfg))
    w = RecordWriter(tmp_path / "records/calls.db", lambda name, **f: None)

    def old(call: str) -> None:
        end = {"call": call, "agent": "e", "reason": "agent", "sip_code": 200, "duration_s": 5.0, "turns": []}
        w.write(call_record(end, time.time() - 40 * 86400, "sip:1@x", "x", "echo", {}, Prices()))

    runs: list[list[str]] = []

    async def go() -> None:
        stop = asyncio.Event()

        def seen(name: str, fields: Mapping[str, Any]) -> None:
            if name == "records_purged":
                runs.append(list(fields["calls"]))
                if len(runs) == 1:
                    old("second")  # expired too: the next run takes it
                else:
                    stop.set()

        unsubscribe = subscribe(seen)
        try:
            async with asyncio.timeout(10):
                await purge_every(lambda: config, stop)
        finally:
            unsubscribe()

    old("first")
    asyncio.run(go())
    assert runs == [["first"], ["second"]]  # 0.72 s apart
    assert read_records(tmp_path / "records/calls.db")[0] == []
