"""The call soak, short: `make soak` runs bench/soak.py for 10 minutes; here 2 concurrent echo calls for
SOAK_TEST_S (12) seconds against `serve --workers 2`, each call replaced as it ends, and every call must pass, have
exactly one call record (by Call-ID), and leave the workers' memory within the bound."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.soak import run_soak


@pytest.mark.timeout(90)
def test_a_short_call_soak_passes_every_call_with_one_record_each(tmp_path: Path):
    seconds = float(os.environ.get("SOAK_TEST_S", "12"))
    res = run_soak(2, seconds, 4.0, tmp_path)
    assert not res["fails"], res
    assert res["calls"] >= 4, f"2 at a time for {seconds:g} s, calls of about 4 s: {res}"  # replaced as they end
    assert res["records"] == res["calls"] == res["passed"]
    assert res["calls_with_tick"] == res["calls"] and res["loss_pct"]["max"] is not None
    assert all(m["start_kb"] > 0 and m["end_kb"] > 0 for m in res["rss"].values()) and len(res["rss"]) == 2
