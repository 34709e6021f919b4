"""Limits on what one source may send a single gateway process (sans-IO): INVITEs per source address in a sliding
window, and the length of an INVITE.

The Kamailio front door (`pike`, its size check) does this for workers behind it; a gateway that faces callers on
its own needs the same, or a burst of INVITEs from one address takes its four call slots. Each source keeps the
times of its last `limit` INVITEs (refused ones count, so a source that keeps flooding stays refused), which is
exact for a sliding window and bounded in memory; sources idle for a window are forgotten.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

SWEEP_ABOVE = 1024
"""Forget idle sources once this many are tracked."""


@dataclass(frozen=True)
class Refusal:
    code: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)


class InviteLimits:
    def __init__(self, max_bytes: int, limit: int | None, window_s: float) -> None:
        self.max_bytes = max_bytes
        self.limit = limit
        self.window_s = window_s
        self._seen: dict[str, deque[float]] = {}

    def check(self, source: str, length: int, now: float) -> Refusal | None:
        """Count an INVITE of `length` bytes from `source` (an IP address) at `now` (seconds, monotonic); the
        refusal, or None to let it through."""
        if self.limit is not None:
            seen = self._seen.get(source)
            if seen is None:
                if len(self._seen) >= SWEEP_ABOVE:
                    self._sweep(now)
                seen = self._seen[source] = deque(maxlen=self.limit)
            full = len(seen) == self.limit and now - seen[0] < self.window_s
            seen.append(now)
            if full:
                wait = max(1, math.ceil(seen[0] + self.window_s - now))
                return Refusal(503, f"more than {self.limit} INVITEs from {source} in {self.window_s:g} s",
                               {"Retry-After": str(wait)})
        if length > self.max_bytes:
            return Refusal(513, f"the INVITE is {length} bytes, over the limit of {self.max_bytes}")
        return None

    def _sweep(self, now: float) -> None:
        for source in [s for s, seen in self._seen.items() if now - seen[-1] >= self.window_s]:
            del self._seen[source]
