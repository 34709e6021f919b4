"""Spend caps: the most one call, and all calls of a day, may cost; what happens when a cap is reached.

Sans-IO: `SpendGuard.check` takes the call's usage, its length and the day's spend of the other calls, prices them
with the config's `prices:` (agents.cost) and answers `None` or `CapReached`. `DailySpend` sums the day's calls in
this process (seeded with the call records of the day at start); the session feeds it each call's running cost.

On a cap the session stops the agent, says `wrap_up`, and then either hangs up (`on_cap: end`) or hands the call to
the cascaded agent named by `cascade` (`on_cap: cascade`), which answers from the conversation so far without a
greeting (agents.base.Handover).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.cost import Prices, price


class SpendCap(BaseModel):
    """An agent's `spend:` section (in the config's currency)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_call: float | None = Field(None, gt=0)
    per_day: float | None = Field(None, gt=0)
    """All calls of this agent in this gateway process on one local calendar day, finished and running."""
    on_cap: Literal["end", "cascade"] = "end"
    cascade: str | None = None
    """The cascaded agent that takes the call over when `on_cap` is `cascade`."""
    wrap_up: str = "I am sorry, I have to finish our call here. Thank you for calling, goodbye."
    """Said when a cap ends the call; with `on_cap: cascade` the default is `handover_line`."""
    handover_line: str = "Let me continue with you on a simpler line."

    @model_validator(mode="after")
    def _target(self) -> SpendCap:
        if self.per_call is None and self.per_day is None:
            raise ValueError("spend: set per_call, per_day or both")
        if (self.on_cap == "cascade") != (self.cascade is not None):
            raise ValueError("spend: `cascade: <agent>` goes with `on_cap: cascade`, and only with it")
        return self


@dataclass(frozen=True)
class CapReached:
    scope: Literal["call", "day"]
    spent: float
    """The call's cost (scope `call`) or the day's (scope `day`) when the cap was found reached."""
    cap: float


@dataclass
class DailySpend:
    """The day's spend per agent in this process: finished calls plus the running cost of live ones."""

    day: dt.date = field(default_factory=dt.date.today)
    finished: dict[str, float] = field(default_factory=dict)
    live: dict[str, tuple[str, float]] = field(default_factory=dict)
    """call id -> (agent, its cost so far)."""

    def _roll(self, today: dt.date) -> None:
        if today != self.day:
            self.day, self.finished = today, {}
            self.live = {k: (a, 0.0) for k, (a, _) in self.live.items()}  # a call over midnight counts anew

    def seed(self, records: Sequence[Mapping[str, Any]], today: dt.date) -> None:
        """Add the finished calls of `today` from call records (`start` ISO time, `agent`, `cost.total`)."""
        self._roll(today)
        for r in records:
            try:
                started = dt.datetime.fromisoformat(str(r["start"])).date()
                cost = float(r["cost"]["total"])
            except (KeyError, TypeError, ValueError):
                continue
            if started == today:
                agent = str(r.get("agent", ""))
                self.finished[agent] = self.finished.get(agent, 0.0) + cost

    def update(self, call: str, agent: str, cost: float, today: dt.date) -> None:
        self._roll(today)
        self.live[call] = (agent, cost)

    def end(self, call: str, today: dt.date) -> None:
        self._roll(today)
        agent, cost = self.live.pop(call, ("", 0.0))
        if agent:
            self.finished[agent] = self.finished.get(agent, 0.0) + cost

    def others(self, call: str, agent: str, today: dt.date) -> float:
        """The day's spend of `agent` without `call`."""
        self._roll(today)
        return self.finished.get(agent, 0.0) + sum(c for k, (a, c) in self.live.items() if a == agent and k != call)


class SpendGuard:
    """One call's check against its agent's caps; fires once."""

    def __init__(self, cap: SpendCap, prices: Prices, ledger: DailySpend, call: str, agent: str) -> None:
        self.cap, self.prices, self.ledger, self.call, self.agent = cap, prices, ledger, call, agent
        self.reached: CapReached | None = None

    def check(self, usage: Mapping[str, float], call_s: float, today: dt.date) -> CapReached | None:
        """The cap this call has just reached, once; None before (and after) that."""
        cost = price(usage, call_s, self.prices).total
        self.ledger.update(self.call, self.agent, cost, today)
        if self.reached is not None:
            return None
        if self.cap.per_call is not None and cost >= self.cap.per_call:
            self.reached = CapReached("call", round(cost, 6), self.cap.per_call)
        elif self.cap.per_day is not None:
            day = self.ledger.others(self.call, self.agent, today) + cost
            if day >= self.cap.per_day:
                self.reached = CapReached("day", round(day, 6), self.cap.per_day)
        return self.reached

    def end(self, today: dt.date) -> None:
        self.ledger.end(self.call, today)
