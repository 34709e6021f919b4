"""The load report's SVG charts, from known values."""

from __future__ import annotations

import re

from telephony.simulator.charts import histogram_svg, percentiles_svg


def test_histogram_has_a_bar_per_bin_with_every_call_counted():
    svg = histogram_svg([10, 10, 20, 30, 30, 30], "answer_ms", "ms", bins=3)
    counts = [int(n) for n in re.findall(r": (\d+) calls</title>", svg)]
    assert counts == [2, 1, 3] and svg.count('class="bar"') == 3


def test_percentiles_over_time_follow_a_rising_measurement():
    times = [float(t) for t in range(100)]
    svg = percentiles_svg(times, [t * 2 for t in times], "latency", "ms", buckets=4)
    p50 = re.search(r'class="p50"[^>]*points="([^"]+)"', svg)
    assert p50 is not None
    ys = [float(pt.split(",")[1]) for pt in p50.group(1).split()]
    assert len(ys) == 4 and ys == sorted(ys, reverse=True)  # higher values are drawn further up
