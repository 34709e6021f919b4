"""Spend caps (agents.spend) and the conversation a capped call hands over (agents.base.Handover.from_turns)."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from agents.base import Handover
from agents.cost import Prices
from agents.spend import CapReached, DailySpend, SpendCap, SpendGuard

DAY = dt.date(2026, 11, 25)
PRICES = Prices.model_validate({"sip_per_min": 0.6, "s2s": {"openai_realtime": {"in_per_min": 6.0}}})


def test_a_cap_needs_a_limit_and_cascade_goes_with_its_agent() -> None:
    with pytest.raises(ValidationError, match="per_call, per_day or both"):
        SpendCap()
    with pytest.raises(ValidationError, match="on_cap: cascade"):
        SpendCap(per_call=1.0, on_cap="cascade")
    with pytest.raises(ValidationError, match="on_cap: cascade"):
        SpendCap(per_call=1.0, cascade="assistant")
    assert SpendCap(per_day=5.0, on_cap="cascade", cascade="assistant").cascade == "assistant"


def test_the_call_cap_fires_once_when_the_priced_usage_reaches_it() -> None:
    guard = SpendGuard(SpendCap(per_call=0.5), PRICES, DailySpend(DAY), "c1", "rt")
    assert guard.check({"openai_realtime_in_s": 3.0}, 3.0, DAY) is None  # 0.3 + 0.03
    hit = guard.check({"openai_realtime_in_s": 5.0}, 5.0, DAY)  # 0.5 + 0.05
    assert hit == CapReached("call", 0.55, 0.5)
    assert guard.check({"openai_realtime_in_s": 9.0}, 9.0, DAY) is None  # once


def test_the_day_cap_counts_finished_and_running_calls_of_the_same_agent() -> None:
    ledger = DailySpend(DAY)
    ledger.seed([{"start": "2026-11-25T09:00:00.000+00:00", "agent": "rt", "cost": {"total": 0.7}},
                 {"start": "2026-11-24T23:59:00.000+00:00", "agent": "rt", "cost": {"total": 5.0}},  # yesterday
                 {"start": "2026-11-25T10:00:00.000+00:00", "agent": "other", "cost": {"total": 5.0}},
                 {"start": "not a time", "agent": "rt", "cost": {"total": 5.0}}], DAY)
    cap = SpendCap(per_day=1.0)
    a = SpendGuard(cap, PRICES, ledger, "a", "rt")
    b = SpendGuard(cap, PRICES, ledger, "b", "rt")
    assert a.check({"openai_realtime_in_s": 1.0}, 0.0, DAY) is None  # 0.7 + 0.1
    hit = b.check({"openai_realtime_in_s": 2.0}, 0.0, DAY)  # 0.7 + 0.1 + 0.2
    assert hit is not None and hit.scope == "day" and hit.spent == pytest.approx(1.0)
    a.end(DAY)
    assert ledger.finished["rt"] == pytest.approx(0.8) and "a" not in ledger.live


def test_a_new_day_starts_from_zero() -> None:
    ledger = DailySpend(DAY)
    guard = SpendGuard(SpendCap(per_day=1.0), PRICES, ledger, "a", "rt")
    assert guard.check({"openai_realtime_in_s": 9.0}, 0.0, DAY) is None  # 0.9
    ledger.end("a", DAY)
    nxt = DAY + dt.timedelta(days=1)
    assert SpendGuard(SpendCap(per_day=1.0), PRICES, ledger, "b", "rt").check({}, 0.0, nxt) is None
    assert ledger.finished == {}


def test_handover_reads_each_backends_turn_records() -> None:
    turns = [
        {"backend": "cascaded", "text": "when are you open", "reply": "From seven.", "heard": "From seven."},
        {"backend": "gateway", "spend_cap": "call"},
        {"backend": "gemini_live", "heard": "and the pool", "text": "The pool opens at nine."},
        {"engine": "openai_realtime", "text": "Anything else?"},
        {"backend": "cascaded", "text": "no", "heard": ""},  # the reply was cut before it was heard
    ]
    assert Handover.from_turns(turns).messages == (
        ("user", "when are you open"), ("assistant", "From seven."), ("user", "and the pool"),
        ("assistant", "The pool opens at nine."), ("assistant", "Anything else?"), ("user", "no"))
