"""The impairment relay's sans-IO core: for one direction of a call's RTP, which packets to drop and when to send
the others, decided from a seed alone.

Each packet that arrives at `now` is dropped (`loss_pct`), or scheduled `now + skew + jitter`, plus a hold for a
packet picked for reordering:
- jitter: a delay drawn uniformly from 0 to 2 x `jitter_ms` (netem's `delay J J`: J on average, varying by +-J).
  Packets still leave in order, as from a queue: one never overtakes the packet before it, so a long delay also
  holds back the packets behind it (a burst, as on a real congested link).
- reordering: a packet picked with `reorder_pct` is held `REORDER_HOLD_MS` more, outside that queue, so the packets
  behind it (two at 20 ms) overtake it.
- clock skew: the far end's clock runs `skew_ppm` slow (> 0): the delay grows by skew_ppm x 1e-6 of the time since
  the first packet, as packets from a sender whose clock is slow reach a jitter buffer. A fast clock (< 0) is the
  same from a head start of `SKEW_HEAD_MS` that shrinks to 0 (after 100 s at -1000 ppm), since a relay cannot send a
  packet before it arrived.

Loss draws one number per packet from `random.Random(f"{seed}:loss")`, delays two per packet from another generator
(`f"{seed}:delay"`), so the same seed drops the same packets whatever the delays, and delays them the same way.
Written by hand: netem (`tc qdisc ... netem`) cannot be seeded, needs a network namespace per call, and would
impair every packet of the link, SIP too; no Python library schedules packets like this.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

REORDER_HOLD_MS = 45.0
"""A reordered packet is sent this much later than it would have been: the next two 20 ms packets overtake it."""
SKEW_HEAD_MS = 100.0
"""The head start a fast far-end clock (negative skew) catches up on."""


class LineImpairment(BaseModel):
    """What a bad line does to RTP, each way (also a script's `network:` block)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss_pct: float = Field(0.0, ge=0, le=50)
    jitter_ms: float = Field(0.0, ge=0, le=500)
    reorder_pct: float = Field(0.0, ge=0, le=50)
    skew_ppm: float = Field(0.0, ge=-10000, le=10000)

    @property
    def active(self) -> bool:
        return any((self.loss_pct, self.jitter_ms, self.reorder_pct, self.skew_ppm))

    def describe(self) -> str:
        """`5% loss, jitter 20 ms, 10% reordered, skew 500 ppm` (only what is set)."""
        parts = [f"{self.loss_pct:g}% loss"] if self.loss_pct else []
        if self.jitter_ms:
            parts.append(f"jitter {self.jitter_ms:g} ms")
        if self.reorder_pct:
            parts.append(f"{self.reorder_pct:g}% reordered")
        if self.skew_ppm:
            parts.append(f"skew {self.skew_ppm:g} ppm")
        return ", ".join(parts) or "no impairment"


@dataclass
class Shaper:
    """One direction of the relay: `arrive()` each packet, then send what `due()` returns; `next_at` says when
    the next packet is due (None: nothing held)."""

    line: LineImpairment
    seed: str
    packets: int = 0
    dropped: list[int] = field(default_factory=list)
    """Arrival indices of the packets dropped."""
    reordered: list[int] = field(default_factory=list)
    """Arrival indices of the packets held back for reordering."""
    delay_ms_total: float = 0.0
    """Sum of the delays of the packets sent (for their mean)."""
    _t0: float | None = field(default=None, init=False)
    _last: float = field(default=0.0, init=False)
    """When the last in-order packet leaves: no later arrival leaves before it."""
    _held: list[tuple[float, int, bytes]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._loss = random.Random(f"{self.seed}:loss")
        self._delay = random.Random(f"{self.seed}:delay")

    def arrive(self, now: float, packet: bytes) -> None:
        index = self.packets
        self.packets += 1
        if self._t0 is None:
            self._t0 = now
        drop = self._loss.random() * 100 < self.line.loss_pct
        u, r = self._delay.random(), self._delay.random()
        if drop:
            self.dropped.append(index)
            return
        at = now + self._skew_s(now) + u * 2 * self.line.jitter_ms / 1000
        if r * 100 < self.line.reorder_pct:
            self.reordered.append(index)
            at = max(at, self._last) + REORDER_HOLD_MS / 1000
        else:
            at = self._last = max(at, self._last)
        self.delay_ms_total += (at - now) * 1000
        heapq.heappush(self._held, (at, index, packet))

    def _skew_s(self, now: float) -> float:
        assert self._t0 is not None
        drift = (now - self._t0) * self.line.skew_ppm / 1e6
        return drift if self.line.skew_ppm >= 0 else max(0.0, SKEW_HEAD_MS / 1000 + drift)

    @property
    def next_at(self) -> float | None:
        return self._held[0][0] if self._held else None

    def due(self, now: float) -> list[bytes]:
        """The packets to send now, in the order they are due."""
        out = []
        while self._held and self._held[0][0] <= now:
            out.append(heapq.heappop(self._held)[2])
        return out

    @property
    def mean_delay_ms(self) -> float:
        sent = self.packets - len(self.dropped)
        return round(self.delay_ms_total / sent, 2) if sent else 0.0
