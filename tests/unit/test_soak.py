"""The call soak's verdict: every call passed, one record per Call-ID the simulator made, bounded worker memory."""

from __future__ import annotations

import json
from pathlib import Path

from bench.soak import DEFAULT_C, DEFAULT_WORKERS, default_concurrency, default_workers, summarise, verdict


def report(call_id: str, passed: bool = True) -> dict:
    return {"call_id": call_id, "passed": passed, "status": 200, "duration_s": 5.0,
            "steps": [{"name": "wait_speech", "ok": passed}]}


def record(call_id: str, loss: float = 0.0, tick: float = 20.9) -> dict:
    return {"call": call_id, "rx_loss_pct": loss, "tx_loss_pct": 0.0, "tick_p99_ms": tick}


RSS = {"0": {"start_kb": 250_000, "peak_kb": 260_000, "end_kb": 255_000}}


def test_a_soak_passes_with_one_record_per_call_and_summarises_loss_and_ticks():
    s = summarise([report("a"), report("b")], [record("a", 0.5, 21.0), record("b", 0.0, 23.0)])
    assert verdict(s, RSS, 0, 48) == []
    assert s["loss_pct"]["max"] == 0.5 and s["tick_p99_ms"]["max"] == 23.0 and s["calls_with_tick"] == 2


def test_a_soak_fails_on_a_failed_call_a_missing_duplicated_or_foreign_record():
    s = summarise([report("a"), report("b", passed=False), report("c")],
                  [record("a"), record("a"), record("x")])
    fails = verdict(s, RSS, 0, 48)
    assert "1 of 3 calls failed" in fails
    assert "2 calls without a call record: b, c" in fails
    assert "1 calls with more than one record: a" in fails
    assert "1 records of calls the simulator did not make: x" in fails
    assert s["failed"][0]["steps"] == [{"name": "wait_speech", "ok": False}]


def test_a_soak_fails_on_memory_growth_a_restart_or_no_calls():
    grown = {"1": {"start_kb": 250_000, "peak_kb": 320_000, "end_kb": 310_000}}
    assert verdict(summarise([report("a")], [record("a")]), grown, 0, 48) == [
        "worker 1 RSS grew 58.6 MB (bound 48 MB)"]
    assert verdict(summarise([report("a")], [record("a")]), RSS, 1, 48) == ["1 worker restart(s)"]
    assert verdict(summarise([], []), RSS, 0, 48) == ["the simulator made no call"]
    assert verdict(summarise([report("")], [record("")]), RSS, 0, 48) == ["1 calls have no Call-ID"]


def test_the_soak_runs_at_80_percent_of_the_measured_load_maximum(tmp_path: Path):
    load = tmp_path / "load.json"
    assert default_concurrency(load) == DEFAULT_C  # not measured
    load.write_text(json.dumps({"max_concurrent_echo_calls": 8}))
    assert default_concurrency(load) == 6
    load.write_text(json.dumps({"max_concurrent_echo_calls": 1}))
    assert default_concurrency(load) == 1


def test_the_soak_uses_as_many_workers_as_the_load_maximum_was_measured_with(tmp_path: Path):
    load = tmp_path / "load.json"
    assert default_workers(load) == DEFAULT_WORKERS  # not measured
    load.write_text(json.dumps({"max_concurrent_echo_calls": 14, "workers": 4}))
    assert (default_concurrency(load), default_workers(load)) == (11, 4)
