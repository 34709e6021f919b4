"""The impairment relay's sans-IO core, driven with exact times: a 20 ms packet clock and the seed decide it all."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from telephony.config import ConfigError
from telephony.simulator.script import load_script
from telephony.simulator.shaper import REORDER_HOLD_MS, SKEW_HEAD_MS, LineImpairment, Shaper
from telephony.simulator.simulate import NO_IMPAIRMENT, call_impairment


def run(line: LineImpairment, seed: str = "s", n: int = 500) -> tuple[Shaper, list[tuple[float, int]]]:
    """n packets 20 ms apart (payload: their index); what left when, polled every millisecond."""
    sh = Shaper(line, seed)
    sent: list[tuple[float, int]] = []
    for ms in range(0, n * 20 + 2000):
        now = ms / 1000
        if ms % 20 == 0 and ms // 20 < n:
            sh.arrive(now, (ms // 20).to_bytes(2, "big"))
        sent += [(now, int.from_bytes(p, "big")) for p in sh.due(now)]
    assert sh.next_at is None
    return sh, sent


def rfc3550_jitter_ms(sent: list[tuple[float, int]]) -> float:
    """The interarrival jitter a receiver computes (RFC 3550 6.4.1), over the packets in arrival order."""
    j, prev = 0.0, None
    for t, i in sent:
        transit = t - i * 0.020
        if prev is not None:
            j += (abs(transit - prev) - j) / 16
        prev = transit
    return j * 1000


def test_a_clean_line_passes_everything_at_once():
    sh, sent = run(LineImpairment())
    assert [i for _, i in sent] == list(range(500)) and all(t == pytest.approx(i * 0.020) for t, i in sent)
    assert sh.dropped == [] and sh.reordered == [] and sh.mean_delay_ms == 0


def test_jitter_delays_in_order_by_up_to_twice_the_figure():
    sh, sent = run(LineImpairment(jitter_ms=20))
    assert [i for _, i in sent] == list(range(500))  # a queue: nothing overtakes
    delays = np.array([t - i * 0.020 for t, i in sent]) * 1000
    assert delays.min() >= 0 and delays.max() <= 40 + 1
    assert 15 < delays.mean() < 30 and delays.std() > 5
    assert sh.mean_delay_ms == pytest.approx(delays.mean(), abs=1)
    assert 5 < rfc3550_jitter_ms(sent) < 25  # what the receiver's statistics will show; a clean line gives 0


def test_reordered_packets_are_overtaken_by_the_next_two():
    sh, sent = run(LineImpairment(reorder_pct=10))
    order = [i for _, i in sent]
    assert sorted(order) == list(range(500)) and order != list(range(500))
    assert 25 < len(sh.reordered) < 80
    for i in sh.reordered:
        t = next(t for t, k in sent if k == i)
        assert t == pytest.approx(i * 0.020 + REORDER_HOLD_MS / 1000, abs=0.0011)
        if i + 2 < 500 and i + 1 not in sh.reordered and i + 2 not in sh.reordered:
            assert order.index(i + 1) < order.index(i) and order.index(i + 2) < order.index(i)


def test_skew_makes_the_delay_drift():
    slow, sent = run(LineImpairment(skew_ppm=5000), n=500)  # 10 s of packets: 50 ms of drift
    delays = [round((t - i * 0.020) * 1000) for t, i in sent]
    assert delays[0] == 0 and delays[-1] == pytest.approx(50, abs=1.5) and delays == sorted(delays)
    fast, sent = run(LineImpairment(skew_ppm=-5000), n=500)
    delays = [round((t - i * 0.020) * 1000) for t, i in sent]
    assert delays[0] == SKEW_HEAD_MS and delays[-1] == pytest.approx(SKEW_HEAD_MS - 50, abs=1.5)
    assert delays == sorted(delays, reverse=True)


def test_the_seed_alone_decides_and_loss_keeps_its_pattern_under_delays():
    a, sa = run(LineImpairment(loss_pct=10, jitter_ms=15, reorder_pct=5), "7:0:rx")
    b, sb = run(LineImpairment(loss_pct=10, jitter_ms=15, reorder_pct=5), "7:0:rx")
    c, _ = run(LineImpairment(loss_pct=10, jitter_ms=15, reorder_pct=5), "8:0:rx")
    assert sa == sb and a.dropped == b.dropped and a.reordered == b.reordered
    assert a.dropped != c.dropped and 25 < len(a.dropped) < 80
    only_loss, _ = run(LineImpairment(loss_pct=10), "7:0:rx")
    assert only_loss.dropped == a.dropped
    assert {i for _, i in sa} == set(range(500)) - set(a.dropped)


def test_settings_out_of_range_are_refused_by_name():
    with pytest.raises(ValidationError, match="jitter_ms"):
        LineImpairment(jitter_ms=-1)
    with pytest.raises(ValidationError, match="reorder_pct"):
        LineImpairment(reorder_pct=80)
    assert LineImpairment(loss_pct=5, jitter_ms=20).describe() == "5% loss, jitter 20 ms"
    assert not LineImpairment().active and LineImpairment(skew_ppm=-3).active


def test_a_scripts_network_block_is_validated_with_its_line(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: bad line\nnetwork:\n  jitter_ms: 30\n  reorder_pct: 5\n")
    script = load_script(p)
    assert script.network == LineImpairment(jitter_ms=30, reorder_pct=5)
    assert call_impairment(NO_IMPAIRMENT, script, 7, 2) == (script.network, "7:2")
    assert call_impairment(LineImpairment(loss_pct=1), script, 7, 2) == (LineImpairment(loss_pct=1), "7:2")
    p.write_text("name: bad line\nnetwork:\n  jitter_ms: -30\n")
    with pytest.raises(ConfigError) as e:
        load_script(p)
    assert f"{p}:3: network.jitter_ms" in str(e.value), str(e.value)
