"""Self-contained SVG charts for the load report: a histogram of one measurement over all calls, and its
percentiles (p50, p95, max) over the run's time, in buckets of calls by start time.

Drawn by hand as SVG text (like the call timelines in report.py) so the HTML report needs no script or library.
"""

from __future__ import annotations

from html import escape

import numpy as np

W, H = 460, 200
LEFT, RIGHT, TOP, BOTTOM = 50, 10, 24, 30


def _frame(title: str, x_label: str, y_top: float, y_unit: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{W}" height="{H}" font-family="sans-serif" '
            f'font-size="11"><title>{escape(title)}</title>',
            f'<text x="{LEFT}" y="14" font-weight="bold">{escape(title)}</text>',
            f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" stroke="#888"/>',
            f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" stroke="#888"/>',
            f'<text x="{W - RIGHT}" y="{H - 4}" text-anchor="end" fill="#555">{escape(x_label)}</text>',
            f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" fill="#555">{y_top:g}</text>',
            f'<text x="{LEFT - 4}" y="{H - BOTTOM}" text-anchor="end" fill="#555">0</text>',
            f'<text x="4" y="{TOP + (H - TOP - BOTTOM) / 2:.0f}" fill="#555">{escape(y_unit)}</text>']


def histogram_svg(values: list[float], title: str, unit: str, bins: int = 20) -> str:
    """Bars of how many calls measured each range of `values`."""
    a = np.asarray(values, dtype=np.float64)
    counts, edges = np.histogram(a, bins=min(bins, max(1, len(np.unique(a)))))
    top = int(counts.max()) if counts.size else 1
    parts = _frame(title, f"{unit} ({edges[0]:.4g} to {edges[-1]:.4g})", top, "calls")
    bw = (W - LEFT - RIGHT) / len(counts)
    ph = H - TOP - BOTTOM
    for i, n in enumerate(counts):
        h = ph * n / top
        parts.append(f'<rect class="bar" x="{LEFT + i * bw + 1:.1f}" y="{H - BOTTOM - h:.1f}" width="{bw - 2:.1f}" '
                     f'height="{h:.1f}" fill="#1f77b4"><title>{edges[i]:.4g}-{edges[i + 1]:.4g} {escape(unit)}: '
                     f'{n} calls</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def percentiles_svg(times: list[float], values: list[float], title: str, unit: str, buckets: int = 10) -> str:
    """p50, p95 and max of `values` per bucket of calls by start time (seconds from the first call)."""
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    t = t - t.min()
    span = max(float(t.max()), 1e-9)
    idx = np.minimum((t / span * buckets).astype(int), buckets - 1)
    rows = [(float((b + 0.5) * span / buckets), *np.percentile(v[idx == b], [50, 95, 100]))
            for b in range(buckets) if np.any(idx == b)]
    top = float(v.max()) or 1.0
    parts = _frame(title, f"call start, s (0 to {span:.1f})", round(top, 1), unit)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    for k, (name, color) in enumerate((("p50", "#2ca02c"), ("p95", "#ff7f0e"), ("max", "#d62728"))):
        pts = " ".join(f"{LEFT + pw * x / span:.1f},{H - BOTTOM - ph * r[k + 1] / top:.1f}"
                       for r in rows for x in [r[0]])
        parts.append(f'<polyline class="{name}" fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
        parts.append(f'<text x="{W - RIGHT - 90 + k * 30}" y="14" fill="{color}">{name}</text>')
    parts.append("</svg>")
    return "".join(parts)
