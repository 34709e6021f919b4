"""The load bench's pass/fail rule for one concurrency step."""

from __future__ import annotations

from bench.load import caller_ports, step_verdict
from tests.integration import peers


def call(rx: float, tx: float | None = 0.0, status: int = 200) -> dict:
    return {"status": status, "rtp": {"rx_loss_pct": rx, "tx_loss_pct": tx} if status == 200 else None}


def test_a_step_passes_only_with_every_call_clean_and_a_steady_clock():
    assert step_verdict([call(0.0), call(0.05, None)], [21.0, 22.5], 2) == ""
    assert step_verdict([call(0.0), call(0.1)], [21.0, 21.0], 2) == "RTP loss 0.1% >= 0.1%"
    assert step_verdict([call(0.0), call(0.0)], [21.0, 25.3], 2) == "tick p99 25.3 ms >= 25 ms"
    assert step_verdict([call(0.0), call(0.0, status=486)], [21.0], 2) == "1 of 2 calls not answered with media " \
                                                                         "(SIP [486])"
    assert step_verdict([call(0.0), call(0.0)], [21.0], 2).startswith("voicegate logged call_end with tick figures")


def test_the_callers_rtp_ports_stay_out_of_the_gateways_range_when_the_port_blocks_wrap(monkeypatch):
    """A caller bound in a worker's RTP range took that worker's ports: its calls failed and the front door answered
    503 (the 20-call step after a full one)."""
    monkeypatch.setattr(peers, "_rtp_next", [peers._RTP_LO + peers._RTP_SPAN - 10])  # the next block wraps to the start
    gateway = (peers._RTP_LO, peers._RTP_LO + 39)
    callers, echo = caller_ports(20, gateway)
    assert callers > gateway[1]
    assert echo >= callers + 200 * 5  # after the five phones' block (simulate puts a phone of 4 calls every 200)
    assert peers.rtp_range(100, avoid=[(callers, callers + 999)])[0] >= callers + 1000
