"""Issue #10's targets over a hand-made bench/run.py results dict."""

from __future__ import annotations

import copy
from typing import Any

from bench.targets import verdicts


def false_stops(**kw: int) -> dict[str, Any]:
    return {"echo_calls": 20, "echo_calls_paused": 0, "echo_calls_stopped": 0, "backchannel_calls": 20,
            "backchannel_calls_stopped": 1, "backchannel_pause_p50_ms": 600.0} | kw


RESULTS: dict[str, Any] = {
    "barge_in": {"n": 20, "p50_ms": 40.0, "p95_ms": 100.0},
    "barge_in_impaired": {"n": 25, "p50_ms": 60.0, "p95_ms": 80.0},
    "wire_false_stops": false_stops(),
    "wire_false_stops_impaired": false_stops(),
    "echo_round_trip": {"added_ms": 60.0},
    "cpu_per_call_second": {"ratio": 1.5},
    "clock_jitter": {"tick_p99_ms": 40.0},
}


def failed(results: dict[str, Any]) -> list[str]:
    return [k for k, v in verdicts(results).items() if not v.passed]


def with_(section: str, **kw: Any) -> dict[str, Any]:
    out = copy.deepcopy(RESULTS)
    out[section] |= kw
    return out


def test_every_target_passes_at_its_bound_and_each_has_a_verdict():
    v = verdicts(RESULTS)
    assert sorted(v) == ["barge_in", "cpu_per_call_second", "echo_round_trip",
                         "wire_false_stops.backchannel", "wire_false_stops.echo_only",
                         "wire_false_stops_impaired.backchannel", "wire_false_stops_impaired.echo_only"]
    assert failed(RESULTS) == []
    assert v["barge_in"].target == "p95 <= 100 ms, n >= 20" and v["barge_in"].measured == "p95 100 ms, n=20"
    assert v["wire_false_stops.echo_only"].measured == "0 paused, 0 stopped of 20"


def test_each_miss_fails_its_own_row_only():
    assert failed(with_("barge_in", p95_ms=100.1)) == ["barge_in"]
    assert failed(with_("wire_false_stops", echo_calls_paused=1)) == ["wire_false_stops.echo_only"]
    assert failed(with_("wire_false_stops_impaired", echo_calls_stopped=1)) == ["wire_false_stops_impaired.echo_only"]
    assert failed(with_("wire_false_stops", backchannel_calls_stopped=2)) == ["wire_false_stops.backchannel"]
    assert failed(with_("echo_round_trip", added_ms=60.5)) == ["echo_round_trip"]
    assert failed(with_("cpu_per_call_second", ratio=2.27)) == ["cpu_per_call_second"]


def test_the_impaired_lines_reaction_is_reported_not_judged():
    assert failed(with_("barge_in_impaired", p95_ms=160.0)) == []
    assert "barge_in_impaired" not in verdicts(RESULTS)


def test_too_few_calls_or_nothing_measured_fails():
    assert failed(with_("barge_in", n=19)) == ["barge_in"]
    assert failed(with_("barge_in", n=0, p95_ms=float("nan"))) == ["barge_in"]
    assert failed(with_("wire_false_stops", echo_calls=19, backchannel_calls=3)) == [
        "wire_false_stops.echo_only", "wire_false_stops.backchannel"]
    assert failed(with_("echo_round_trip", added_ms=float("nan"))) == ["echo_round_trip"]


def test_only_sections_present_are_judged():
    only = {"wire_false_stops": false_stops(echo_calls_paused=2)}
    assert list(verdicts(only)) == ["wire_false_stops.echo_only", "wire_false_stops.backchannel"]
    assert failed(only) == ["wire_false_stops.echo_only"]
    assert verdicts({}) == {}
