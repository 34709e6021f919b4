"""A call's listening quality from its transport figures: the ITU-T G.107 E-model's rating R, and MOS from R.

Written by hand: no PyPI package implementing G.107 turned up in a search of the package index, and the part used
here is a few lines of arithmetic. What is modelled:

- R = 93.2 - Idd - Ie,eff: 93.2 is G.107's R with every parameter at its default value, so the echo and noise terms
  stay at their defaults and only the absolute one-way delay Ta (through Idd) and packet loss (through Ie,eff)
  move it.
- Idd = 0 for Ta <= 100 ms, else 25 * ((1 + X^6)^(1/6) - 3 * (1 + (X/3)^6)^(1/6) + 2) with X = log2(Ta / 100).
- Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl), Ppl in percent; BurstR = 1 is random loss.
- Codec values from G.113 Appendix I: G.711 (PCMU, PCMA) with packet loss concealment, as pjmedia runs it:
  Ie = 0, Bpl = 25.1. Other codecs get no estimate (G.722 is wideband: G.107.1, another scale).
- MOS (conversational quality estimate, MOS-CQE) = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6 for 0 < R < 100.

`line_quality` applies it to a call's RTP figures (RTCP round trip, jitter buffer delay, packet loss); the test
phone (telephony/simulator) and the gateway's call records both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from media.frames import FRAME_MS

R_DEFAULT = 93.2


@dataclass(frozen=True)
class Codec:
    ie: float
    """Equipment impairment factor."""
    bpl: float
    """Packet-loss robustness factor."""


CODECS = {"PCMU": Codec(0.0, 25.1), "PCMA": Codec(0.0, 25.1)}


def delay_impairment(ta_ms: float) -> float:
    """Idd for an absolute one-way delay in ms."""
    if ta_ms <= 100:
        return 0.0
    x = math.log2(ta_ms / 100)
    return float(25 * ((1 + x**6) ** (1 / 6) - 3 * (1 + (x / 3) ** 6) ** (1 / 6) + 2))


def effective_equipment_impairment(codec: Codec, loss_pct: float, burst_r: float = 1.0) -> float:
    """Ie,eff for `loss_pct` percent of packets lost."""
    return codec.ie + (95 - codec.ie) * loss_pct / (loss_pct / burst_r + codec.bpl)


def r_factor(codec: str, loss_pct: float, delay_ms: float, burst_r: float = 1.0) -> float | None:
    """The rating R (0-100) for a codec name (`PCMU`, `PCMU/8000`), or None where G.113 gives no values."""
    c = CODECS.get(codec.split("/")[0].upper())
    if c is None:
        return None
    if not 0 <= loss_pct <= 100 or delay_ms < 0 or burst_r < 1:
        raise ValueError(f"loss {loss_pct} %, delay {delay_ms} ms, BurstR {burst_r}: out of range")
    r = R_DEFAULT - delay_impairment(delay_ms) - effective_equipment_impairment(c, loss_pct, burst_r)
    return max(0.0, min(100.0, r))


def mos(r: float) -> float:
    """G.107 Annex B: the MOS estimate for a rating R."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


def line_quality(codec: str, loss_pct: float, rtt_ms: float | None, jbuf_delay_ms: float) -> dict[str, float | None]:
    """The E-model's estimate for a call leg: one-way delay Ta is half the RTCP round trip (0 before the first
    report), plus the jitter buffer's mean delay (what jitter costs the listener) and one packet; `loss_pct` is the
    packet loss the listener suffered. `r_factor` and `mos` are None for codecs without G.113 values."""
    delay = (rtt_ms or 0.0) / 2 + jbuf_delay_ms + FRAME_MS
    r = r_factor(codec, loss_pct, delay)
    return {"delay_ms": round(delay, 1), "r_factor": None if r is None else round(r, 1),
            "mos": None if r is None else round(mos(r), 2)}
