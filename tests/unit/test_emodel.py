"""The E-model against values worked out by hand from G.107's formulas."""

from __future__ import annotations

import pytest

from telephony.simulator.emodel import delay_impairment, mos, r_factor


def test_defaults_give_g107s_reference_rating():
    assert r_factor("PCMU/8000", 0, 0) == pytest.approx(93.2)
    assert mos(93.2) == pytest.approx(4.41, abs=0.005)
    assert r_factor("G722/16000", 0, 0) is None


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
