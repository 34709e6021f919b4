"""Outbound call rate per trunk (`max_calls_per_min`), sans-IO: a sliding one-minute window of the calls placed.

A second guard against toll fraud besides the trunk's `allowed` numbers: a leaked control token or a runaway
script can dial only so many calls a minute.
"""

from __future__ import annotations

from collections import deque

WINDOW_S = 60.0


class DialRate:
    def __init__(self) -> None:
        self._placed: dict[str, deque[float]] = {}

    def take(self, trunk: str, limit: int | None, now: float) -> float:
        """Count one call on `trunk` at `now` and return 0, or, when `limit` calls were placed in the last
        minute, count nothing and return the seconds until the next one may go."""
        if limit is None:
            return 0.0
        placed = self._placed.setdefault(trunk, deque())
        while placed and now - placed[0] >= WINDOW_S:
            placed.popleft()
        if len(placed) >= limit:
            return placed[0] + WINDOW_S - now
        placed.append(now)
        return 0.0
