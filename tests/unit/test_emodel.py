"""The E-model against values worked out by hand from G.107's and G.107.1's formulas."""

from __future__ import annotations

import pytest

from media.emodel import delay_impairment, is_wideband, line_quality, mos, no_estimate_reason, r_factor
from telephony.rtp_stats import with_quality
from telephony.simulator.report import CallReport, rtp_line, series, summary


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


def test_line_quality_maps_a_calls_rtp_figures():
    # Ta = 300 / 2 + 40 + 20 = 210 ms: X = log2(2.1), Idd = 4.11; Ie,eff = 95 * 2 / (2 + 25.1) = 7.01
    q = line_quality("PCMA/8000", 2.0, 300.0, 40.0)
    assert q["delay_ms"] == 210.0 and q["r_factor"] == pytest.approx(93.2 - 4.11 - 7.01, abs=0.06)
    assert q["mos"] == round(mos(q["r_factor"] or 0), 2)
    assert line_quality("PCMU", 0.0, None, 0.0) == {"delay_ms": 20.0, "r_factor": 93.2, "r_scale": 100.0,
                                                     "mos": 4.41}  # no RTCP yet
    assert line_quality("G722/16000", 0.0, 10.0, 20.0) == {"delay_ms": 45.0, "r_factor": 116.0, "r_scale": 129.0,
                                                           "mos": 4.34}
    assert line_quality("GSM/8000", 0.0, 10.0, 20.0)["mos"] is None


def test_a_call_record_rates_the_worse_direction():
    rtp = {"rx_pkts": 199, "rx_loss_pct": 0.5, "tx_loss_pct": 5.0, "rtt_ms": None, "jbuf_delay_ms": 0,
           "rx_jitter_ms": 1.0}
    q = with_quality(rtp, "PCMU/8000")  # 5 %: Ie,eff = 95 * 5 / 30.1 = 15.78
    assert q["r_factor"] == 77.4 and q["mos"] == round(mos(77.4), 2) and q["rx_jitter_ms"] == 1.0
    # 0.5 %: Ie,eff = 95 * 0.5 / 25.6 = 1.86
    assert with_quality({**rtp, "tx_loss_pct": 0.0}, "PCMU/8000")["r_factor"] == 91.3
    assert with_quality(rtp, "")["mos"] is None  # no media negotiated
    silent = with_quality({**rtp, "rx_pkts": 0, "rx_loss_pct": 0.0}, "PCMU/8000")  # a far end that sent no RTP
    assert (silent["delay_ms"], silent["r_factor"], silent["mos"]) == (None, None, None)


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


def test_a_call_without_an_estimate_says_why():
    assert no_estimate_reason("G722/16000", 2.0) == (
        "2% loss on G722: no published packet-loss robustness factor (Bpl,WB) for G722")
    assert no_estimate_reason("G722/16000", 0.0) == no_estimate_reason("PCMU/8000", 5.0) == ""
    assert no_estimate_reason("GSM/8000", 0.0) == "no G.113 impairment values for GSM"
    assert no_estimate_reason("", 0.0) == "no G.113 impairment values for an unknown codec"
    q = line_quality("G722/16000", 2.0, 10.0, 20.0)
    assert q["mos"] is None
    lossy = CallReport("s", "s.yaml", "sip:x", 200, 200, 0.1, "G722/16000", 5.0,
                       rtp={"rx_loss_pct": 2.0, "rx_jitter_ms": 1.0, **q})
    assert rtp_line(lossy) == ("rx loss 2%, jitter 1 ms, MOS not computed (2% loss on G722: no published packet-loss "
                               "robustness factor (Bpl,WB) for G722)")
    clean = CallReport("s", "s.yaml", "sip:x", 200, 200, 0.1, "G722/16000", 5.0,
                       rtp={"rx_loss_pct": 0.0, "rx_jitter_ms": 1.0, **line_quality("G722/16000", 0.0, 10.0, 20.0)})
    assert rtp_line(clean) == "rx loss 0%, jitter 1 ms, MOS 4.34 (R 116.0 of 129, wideband)"


def test_load_summaries_keep_wideband_and_narrowband_mos_apart():
    def call(codec: str, mos_value: float, scale: float) -> CallReport:
        return CallReport("s", "s.yaml", "sip:x", 200, 200, 0.1, codec, 5.0, started=1.0,
                          rtp={"rx_loss_pct": 0.0, "rx_jitter_ms": 1.0, "mos": mos_value, "r_scale": scale})

    reports = [call("PCMU/8000", 4.41, 100.0), call("G722/16000", 4.34, 129.0)]
    text = summary(reports)
    assert "rtp.mos " in text and "rtp.mos_wb " in text, text
    assert series(reports)["rtp.mos_wb"] == ([1.0], [4.34]) and series(reports)["rtp.mos"] == ([1.0], [4.41])
