"""A call's listening quality from its transport figures: the ITU-T G.107 E-model's rating R, and MOS from R;
G.722 calls on the wideband E-model of G.107.1.

Written by hand: no PyPI package implementing G.107 turned up in a search of the package index, and the part used
here is a few lines of arithmetic. What is modelled:

- Narrowband (G.107): R = 93.2 - Idd - Ie,eff. 93.2 is G.107's R with every parameter at its default value, so the
  echo and noise terms stay at their defaults and only the absolute one-way delay Ta (through Idd) and packet loss
  (through Ie,eff) move it.
- Wideband (G.107.1): R = 129 - Idd - Ie,eff,WB. 129 is Ro,WB, the wideband scale's R of an unimpaired connection;
  Is,WB and A are 0 (G.107.1's defaults), Idd is G.107's formula.
- Idd = 0 for Ta <= 100 ms, else 25 * ((1 + X^6)^(1/6) - 3 * (1 + (X/3)^6)^(1/6) + 2) with X = log2(Ta / 100).
- Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl), Ppl in percent; BurstR = 1 is random loss. The wideband
  model keeps the constant 95 (G.107.1 Eq. 7-15), not 129.
- Codec values from G.113 Appendix I: G.711 (PCMU, PCMA) with packet loss concealment, as pjmedia runs it:
  Ie = 0, Bpl = 25.1. G.722 at 64 kbit/s from G.113 Appendix IV (Table IV.1, listening through a handset):
  Ie,WB = 13. The search could open neither G.113 nor G.107.1 themselves: the wideband formulas and Ro,WB = 129
  were checked against a public G.107.1 implementation that cites G.107.1 (06/2019, Corrigendum 1) and G.113
  (09/2024) Appendix IV, and that table had no row for G.722, so Ie,WB = 13 is G.113 Appendix IV's value as
  recalled, not as read (Mitel's MX-ONE 7.8 transmission planning guide lists Ie,wb = 14 for G.722 at 64 kbit/s,
  next to an "Ie,wb = Ie + 15" conversion that belongs to an older wideband scale, and cites no table).
  No Bpl,WB for G.722 was found, so a G.722 call with packet loss gets no estimate rather than a borrowed
  robustness factor (`no_estimate_reason` says so in the reports). A second search (2026-11-26: ITU pages, papers
  on the wideband impairment framework, open-source E-model code) found none either; the same public
  implementation quotes G.113 (09/2024) Table IV.4 as publishing Bpl,WB for three AMR-WB (G.722.2) modes only,
  for diotic listening and random loss. Other codecs get no estimate either.
- MOS (conversational quality estimate, MOS-CQE) = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6 for 0 < R < 100; on the
  wideband scale the same polynomial of Rx = R / 1.29 (G.107.1 Annex A, MOS-CQEW). The two are different
  scales: a G.722 call's 4.34 and a G.711 call's 4.41 say nothing about which sounded better.

`line_quality` applies it to a call's RTP figures (RTCP round trip, jitter buffer delay, packet loss); the test
phone (telephony/simulator) and the gateway's call records both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from media.frames import FRAME_MS

R_DEFAULT = 93.2
R_DEFAULT_WB = 129.0
WB_SCALE = 1.29
"""G.107.1 Annex A: Rx = R / 1.29 maps the wideband rating onto the narrowband MOS polynomial."""


@dataclass(frozen=True)
class Codec:
    ie: float
    """Equipment impairment factor (Ie,WB for a wideband codec)."""
    bpl: float | None
    """Packet-loss robustness factor (None: not published, so no estimate under loss)."""
    wideband: bool = False


CODECS = {"PCMU": Codec(0.0, 25.1), "PCMA": Codec(0.0, 25.1), "G722": Codec(13.0, None, wideband=True)}


def delay_impairment(ta_ms: float) -> float:
    """Idd for an absolute one-way delay in ms."""
    if ta_ms <= 100:
        return 0.0
    x = math.log2(ta_ms / 100)
    return float(25 * ((1 + x**6) ** (1 / 6) - 3 * (1 + (x / 3) ** 6) ** (1 / 6) + 2))


def effective_equipment_impairment(codec: Codec, loss_pct: float, burst_r: float = 1.0) -> float | None:
    """Ie,eff for `loss_pct` percent of packets lost (None: loss on a codec without a published Bpl)."""
    if loss_pct == 0:
        return codec.ie
    if codec.bpl is None:
        return None
    return codec.ie + (95 - codec.ie) * loss_pct / (loss_pct / burst_r + codec.bpl)


def r_factor(codec: str, loss_pct: float, delay_ms: float, burst_r: float = 1.0) -> float | None:
    """The rating R for a codec name (`PCMU`, `PCMU/8000`, `G722/16000`): 0-100 for narrowband codecs, 0-129 on
    G.722's wideband scale; None where G.113 gives no values."""
    c = CODECS.get(codec.split("/")[0].upper())
    if c is None:
        return None
    if not 0 <= loss_pct <= 100 or delay_ms < 0 or burst_r < 1:
        raise ValueError(f"loss {loss_pct} %, delay {delay_ms} ms, BurstR {burst_r}: out of range")
    ie_eff = effective_equipment_impairment(c, loss_pct, burst_r)
    if ie_eff is None:
        return None
    top = R_DEFAULT_WB if c.wideband else R_DEFAULT
    return max(0.0, min(top, top - delay_impairment(delay_ms) - ie_eff))


def no_estimate_reason(codec: str, loss_pct: float) -> str:
    """Why `r_factor` rates no call of `codec` with `loss_pct` percent loss ('' when it rates one)."""
    name = codec.split("/")[0].upper()
    c = CODECS.get(name)
    if c is None:
        return f"no G.113 impairment values for {name or 'an unknown codec'}"
    if loss_pct > 0 and c.bpl is None:
        return f"{loss_pct:g}% loss on {name}: no published packet-loss robustness factor (Bpl,WB) for {name}"
    return ""


def is_wideband(codec: str) -> bool:
    """Whether `r_factor` rates this codec on G.107.1's wideband scale."""
    c = CODECS.get(codec.split("/")[0].upper())
    return c is not None and c.wideband


def mos(r: float, wideband: bool = False) -> float:
    """G.107 Annex B (or G.107.1 Annex A for a wideband R): the MOS estimate for a rating R."""
    if wideband:
        r /= WB_SCALE
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


def line_quality(codec: str, loss_pct: float, rtt_ms: float | None, jbuf_delay_ms: float) -> dict[str, float | None]:
    """The E-model's estimate for a call leg: one-way delay Ta is half the RTCP round trip (0 before the first
    report), plus the jitter buffer's mean delay (what jitter costs the listener) and one packet; `loss_pct` is the
    packet loss the listener suffered. `r_scale` is 129 for G.722 (G.107.1's wideband scale), else 100; `r_factor`
    and `mos` are None for codecs without G.113 values."""
    delay = (rtt_ms or 0.0) / 2 + jbuf_delay_ms + FRAME_MS
    r = r_factor(codec, loss_pct, delay)
    wb = is_wideband(codec)
    return {"delay_ms": round(delay, 1), "r_factor": None if r is None else round(r, 1),
            "r_scale": R_DEFAULT_WB if wb else 100.0, "mos": None if r is None else round(mos(r, wb), 2)}
