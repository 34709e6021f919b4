"""The E-model against values worked out by hand from G.107's and G.107.1's formulas."""

from __future__ import annotations

import pytest

from telephony.simulator.emodel import delay_impairment, is_wideband, mos, r_factor
from telephony.simulator.report import CallReport, series, summary


def test_defaults_give_g107s_reference_rating():
    assert r_factor("PCMU/8000", 0, 0) == pytest.approx(93.2)
    assert mos(93.2) == pytest.approx(4.41, abs=0.005)
    assert r_factor("GSM/8000", 0, 0) is None


def test_loss_and_delay_lower_the_rating():
    # Ie,eff = 95 * 5 / (5 + 25.1) = 15.78
    assert r_factor("PCMA", 5, 0) == pytest.approx(93.2 - 15.78, abs=0.01)
    # X = log2(2) = 1: Idd = 25 * (2**(1/6) - 3 * (1 + 1/729)**(1/6) + 2) = 3.04
    assert delay_impairment(200) == pytest.approx(3.044, abs=0.001)
    assert delay_impairment(100) == 0
    assert mos(r_factor("PCMU", 5, 200) or 0) < mos(r_factor("PCMU", 1, 200) or 0) < mos(r_factor("PCMU", 0, 0) or 0)
    assert mos(-3) == 1 and mos(120) == 4.5
    with pytest.raises(ValueError, match="out of range"):
        r_factor("PCMU", 150, 0)


def test_g722_is_rated_on_the_wideband_scale():
    # Ro,WB 129 - Ie,WB 13 = 116; Rx = 116 / 1.29 = 89.92: MOS = 1 + 0.035 Rx + Rx (Rx - 60) (100 - Rx) 7e-6
    assert is_wideband("G722/16000") and not is_wideband("PCMU/8000")
    assert r_factor("G722/16000", 0, 0) == pytest.approx(116.0)
    assert mos(116.0, wideband=True) == pytest.approx(4.337, abs=0.001)
    # delay counts as on the narrowband scale: Idd(200 ms) = 3.04
    assert r_factor("G722", 0, 200) == pytest.approx(116.0 - 3.044, abs=0.001)
    assert mos(129.0 * 1.0, wideband=True) == 4.5 and mos(0.0, wideband=True) == 1.0
    # no published Bpl,WB for G.722: a lossy G.722 call gets no estimate instead of a borrowed one
    assert r_factor("G722/16000", 2.0, 0) is None


def test_load_summaries_keep_wideband_and_narrowband_mos_apart():
    def call(codec: str, mos_value: float, scale: float) -> CallReport:
        return CallReport("s", "s.yaml", "sip:x", 200, 200, 0.1, codec, 5.0, started=1.0,
                          rtp={"rx_loss_pct": 0.0, "rx_jitter_ms": 1.0, "mos": mos_value, "r_scale": scale})

    reports = [call("PCMU/8000", 4.41, 100.0), call("G722/16000", 4.34, 129.0)]
    text = summary(reports)
    assert "rtp.mos " in text and "rtp.mos_wb " in text, text
    assert series(reports)["rtp.mos_wb"] == ([1.0], [4.34]) and series(reports)["rtp.mos"] == ([1.0], [4.41])
