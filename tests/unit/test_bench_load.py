"""The load bench's pass/fail rule for one concurrency step."""

from __future__ import annotations

from bench.load import step_verdict


def call(rx: float, tx: float | None = 0.0, status: int = 200) -> dict:
    return {"status": status, "rtp": {"rx_loss_pct": rx, "tx_loss_pct": tx} if status == 200 else None}


def test_a_step_passes_only_with_every_call_clean_and_a_steady_clock():
    assert step_verdict([call(0.0), call(0.05, None)], [21.0, 22.5], 2) == ""
    assert step_verdict([call(0.0), call(0.1)], [21.0, 21.0], 2) == "RTP loss 0.1% >= 0.1%"
    assert step_verdict([call(0.0), call(0.0)], [21.0, 25.3], 2) == "tick p99 25.3 ms >= 25 ms"
    assert step_verdict([call(0.0), call(0.0, status=486)], [21.0], 2) == "1 of 2 calls not answered with media " \
                                                                         "(SIP [486])"
    assert step_verdict([call(0.0), call(0.0)], [21.0], 2).startswith("voicegate logged call_end with tick figures")
