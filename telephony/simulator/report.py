"""Simulation reports: console, JUnit XML (one test case per script step, plus the dial) and HTML.

What `expect_speech` steps heard is in all of them: on the console line, as the JUnit case's system-out, in the HTML
step table and as a label on the agent's track of the timeline.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np

from media.emodel import no_estimate_reason
from telephony.simulator.charts import histogram_svg, percentiles_svg
from telephony.simulator.impair import Impairment
from telephony.simulator.runner import StepResult


@dataclass
class CallReport:
    script: str
    file: str
    target: str
    status: int
    expected_status: int
    answer_s: float | None
    codec: str
    duration_s: float
    steps: list[StepResult] = field(default_factory=list)
    error: str = ""
    sent_db: list[float] = field(default_factory=list)
    """Level of every frame the caller sent (dBFS, 20 ms each); `heard_db` of every frame it received."""
    heard_db: list[float] = field(default_factory=list)
    caller_speech: list[tuple[int, int]] = field(default_factory=list)
    """First and last frame of each utterance the caller sent; `agent_audio` of each run of agent audio it heard (2
    frames or more, as the runner counts the agent talking)."""
    agent_audio: list[tuple[int, int]] = field(default_factory=list)
    rtp: dict[str, float | None] | None = None
    """The phone's RTP statistics at hang-up (phone.RtpStats), with `delay_ms` (the one-way delay the E-model
    used), `r_factor` on the scale `r_scale` (100, or 129 for G.722's wideband E-model) and `mos` (None for codecs
    the E-model has no values for)."""
    started: float = 0.0
    """Wall time (time.time()) the call was dialled."""
    impairment: Impairment | None = None
    """With --loss, --jitter, --reorder or --skew (or a script's `network:`): the call's seed, what the relay did."""
    call_id: str = ""
    """The SIP Call-ID of the call ('' when none was made)."""
    phone: int = 0
    """The process id of the phone that placed it (in load mode, one phone holds several calls at once)."""
    seed: int | None = None
    """The run's seed (`--seed`, else drawn): the line's impairment and the persona's requests follow from it."""

    @property
    def false_barge_ins(self) -> int | None:
        """Times the agent's audio stopped while the caller was silent, over the call's `expect_no_barge_in` steps
        (None: the call had none)."""
        counts = [s.metrics["false_barge_ins"] for s in self.steps if "false_barge_ins" in s.metrics]
        return int(sum(counts)) if counts else None

    @property
    def dial_ok(self) -> bool:
        return self.status == self.expected_status and not self.error

    @property
    def passed(self) -> bool:
        return self.dial_ok and all(s.ok for s in self.steps)


def rtp_line(r: CallReport) -> str:
    """`rx loss 5.1%, jitter 0.4 ms, rtt 1.2 ms, MOS 3.92 (R 77.1)`, or why the E-model gave no MOS; '' without
    statistics."""
    q = r.rtp
    if not q:
        return ""
    parts = [f"rx loss {q['rx_loss_pct']:g}%"]
    if q.get("tx_loss_pct") is not None:
        parts.append(f"tx loss {q['tx_loss_pct']:g}%")
    parts.append(f"jitter {q['rx_jitter_ms']:g} ms")
    if q.get("rtt_ms") is not None:
        parts.append(f"rtt {q['rtt_ms']:g} ms")
    if q.get("mos") is not None:
        wb = " of 129, wideband" if q.get("r_scale") == 129.0 else ""
        parts.append(f"MOS {q['mos']:.2f} (R {q['r_factor']:.1f}{wb})")
    elif why := no_estimate_reason(r.codec, q["rx_loss_pct"] or 0.0):
        parts.append(f"MOS not computed ({why})")
    return ", ".join(parts)


def impairment_line(i: Impairment) -> str:
    """`seed 7:0, 5% loss, jitter 20 ms: dropped 12/250 packets to the caller, 10/250 from it; ...`."""
    text = (f"seed {i.seed}, {i.line.describe()}: dropped {len(i.rx_dropped)}/{i.rx_packets} packets to the caller, "
            f"{len(i.tx_dropped)}/{i.tx_packets} from it")
    if i.line.reorder_pct:
        text += f"; reordered {len(i.rx_reordered)} to the caller, {len(i.tx_reordered)} from it"
    if i.line.jitter_ms or i.line.skew_ppm or i.line.reorder_pct:
        text += f"; mean added delay {i.rx_delay_ms:g} ms to the caller, {i.tx_delay_ms:g} ms from it"
    return text


def _fmt_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in metrics.items())


def _heard(s: StepResult) -> str:
    return f"heard {s.transcript!r}" if s.transcript is not None else ""


def _seed(r: CallReport) -> str:
    return f", seed {r.seed}" if r.seed is not None else ""


def console(reports: list[CallReport]) -> str:
    lines = []
    for r in reports:
        mark = "PASS" if r.passed else "FAIL"
        lines.append(f"{mark} {r.script} ({r.file}) -> {r.target}: SIP {r.status}, codec {r.codec or '-'}, "
                     f"answer {r.answer_s if r.answer_s is not None else '-'} s, {r.duration_s:.1f} s{_seed(r)}")
        if not r.dial_ok:
            lines.append(f"  x dial: expected {r.expected_status}, got {r.status} {r.error}".rstrip())
        if r.rtp:
            lines.append(f"  rtp: {rtp_line(r)}")
        if r.impairment:
            lines.append(f"  impaired: {impairment_line(r.impairment)}")
        if r.false_barge_ins is not None:
            lines.append(f"  false barge-ins: {r.false_barge_ins}")
        for s in r.steps:
            lines.append(f"  {'ok' if s.ok else ' x'} {s.index + 1:02d} {s.name} {s.seconds:.2f}s "
                         f"{_fmt_metrics(s.metrics)} {s.message or _heard(s)}".rstrip())
    passed = sum(r.passed for r in reports)
    lines.append(f"{passed} passed, {len(reports) - passed} failed")
    return "\n".join(lines)


def _scaled(rtp: dict[str, float | None], key: str) -> str:
    """`mos_wb` for the MOS of a call rated on the wideband scale, which must not share percentiles with G.711's."""
    return f"{key}_wb" if key == "mos" and rtp.get("r_scale") == 129.0 else key


def summary(reports: list[CallReport]) -> str:
    """Load mode: totals, failures by step, and percentiles of every measurement over all calls."""
    lines = []
    failures: dict[str, int] = {}
    values: dict[str, list[float]] = {"answer_ms": [r.answer_s * 1000 for r in reports if r.answer_s is not None]}
    for r in reports:
        for k in ("rx_loss_pct", "rx_jitter_ms", "mos"):
            if r.rtp and r.rtp.get(k) is not None:
                values.setdefault(f"rtp.{_scaled(r.rtp, k)}", []).append(float(r.rtp[k] or 0.0))
        if not r.dial_ok:
            failures["dial"] = failures.get("dial", 0) + 1
        for s in r.steps:
            if not s.ok:
                key = f"{s.index + 1:02d} {s.name}"
                failures[key] = failures.get(key, 0) + 1
            for k, v in s.metrics.items():
                if v != float("inf"):
                    values.setdefault(f"{s.name}.{k}", []).append(v)
    for name, vs in values.items():
        if vs:
            a = np.asarray(vs, dtype=np.float64)
            p50, p95 = np.percentile(a, [50, 95])
            lines.append(f"  {name:<32} n={a.size:<5} p50={p50:8.1f}  p95={p95:8.1f}  max={a.max():8.1f}")
    for key, n in sorted(failures.items()):
        lines.append(f"  failed at {key}: {n}")
    passed = sum(r.passed for r in reports)
    lines.append(f"{passed} passed, {len(reports) - passed} failed")
    return "\n".join(lines)


def junit(reports: list[CallReport], path: Path, invalid: list[tuple[str, list[str]]] | None = None) -> None:
    """One suite per call, a case per step; `invalid` scripts (file, errors) that could not run come first, each a
    suite with one failed case, `00 script`, whose failure message is the errors (`file:line: field: error`)."""
    root = ET.Element("testsuites")
    for file, errors in invalid or []:
        suite = ET.SubElement(root, "testsuite", name=file, tests="1", failures="1", time="0.000")
        case = ET.SubElement(suite, "testcase", classname=file, name="00 script", time="0.000")
        ET.SubElement(case, "failure", message="\n".join(errors)).text = "\n".join(errors)
    for r in reports:
        cases = [("00 dial", r.dial_ok, f"expected SIP {r.expected_status}, got {r.status} {r.error}".strip(),
                  r.answer_s or 0.0)]
        cases += [(f"{s.index + 1:02d} {s.name}", s.ok, s.message, s.seconds) for s in r.steps]
        heard = {f"{s.index + 1:02d} {s.name}": _heard(s) for s in r.steps if s.transcript is not None}
        suite = ET.SubElement(root, "testsuite", name=r.script, tests=str(len(cases)),
                              failures=str(sum(not ok for _, ok, _, _ in cases)), time=f"{r.duration_s:.3f}")
        metrics = [(f"{s.index + 1:02d} {s.name}", s.metrics) for s in r.steps if s.metrics]
        if r.rtp:
            metrics.insert(0, ("rtp", {k: v for k, v in r.rtp.items() if v is not None}))
        if r.false_barge_ins is not None:
            metrics.insert(0, ("call", {"false_barge_ins": r.false_barge_ins}))
        if r.seed is not None:
            metrics.insert(0, ("call", {"seed": r.seed}))
        if metrics:  # measurements as suite properties, which JUnit readers show beside the cases
            props = ET.SubElement(suite, "properties")
            for name, m in metrics:
                for k, v in m.items():
                    value = str(v) if isinstance(v, int) else f"{v:g}"  # a seed's every digit
                    ET.SubElement(props, "property", name=f"{name}.{k}", value=value)
        for name, ok, message, seconds in cases:
            case = ET.SubElement(suite, "testcase", classname=r.script, name=name, time=f"{seconds:.3f}")
            if not ok:
                ET.SubElement(case, "failure", message=message or "failed")
            if name in heard:
                ET.SubElement(case, "system-out").text = heard[name]
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def audio_runs(flags: bytes | bytearray, min_frames: int = 2) -> list[tuple[int, int]]:
    """First and last index of each run of nonzero flags at least `min_frames` long."""
    x = np.frombuffer(bytes(flags), dtype=np.uint8) > 0
    edges = np.flatnonzero(np.diff(np.concatenate(([False], x, [False])).astype(np.int8)))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= min_frames]


def _segments(runs: list[tuple[int, int]], who: str, x0: float, scale: float, top: float, color: str) -> str:
    """Each run as a shaded bar over its track, with its times as the tooltip."""
    return "".join(f'<rect class="segment {who}" x="{x0 + a * scale:.1f}" y="{top}" width="{(b - a + 1) * scale:.1f}" '
                   f'height="70" fill="{color}" opacity="0.18"><title>{who.replace("-", " ")} {a / 50:.2f}-'
                   f'{(b + 1) / 50:.2f} s</title></rect>' for a, b in runs)


def _envelope(levels: list[float], x0: float, scale: float, top: float, height: float) -> str:
    pts = []
    for i, db in enumerate(levels):
        v = min(1.0, max(0.0, (db + 60.0) / 60.0))
        pts.append(f"{x0 + i * scale:.1f},{top + height * (1 - v):.1f}")
    return " ".join(pts)


SPAN_METRIC = {"interrupt": "reaction_ms", "wait_speech": "latency_ms", "expect_speech": "latency_ms",
               "dtmf": "reply_ms"}
"""The measurement a step's first and last marks span, written on the timeline between them."""
CALLER_MARKS = ("caller", "keys", "turn from", "step start")
"""Marks of the caller's side (blue, dashed); the others are the agent's (red)."""


def _marks_svg(s: StepResult, x0: float, scale: float) -> list[str]:
    """A step's marks as vertical lines over both tracks, and its latency or reaction between them."""
    parts = []
    for name, frame in s.marks.items():
        x = x0 + frame * scale
        caller = name.startswith(CALLER_MARKS)
        color, dash, y = ("#1f77b4", ' stroke-dasharray="3,2"', 20) if caller else ("#d62728", "", 100)
        parts.append(f'<line class="mark {name.replace(" ", "-")}" x1="{x:.1f}" y1="10" x2="{x:.1f}" y2="160" '
                     f'stroke="{color}"{dash}><title>{s.index + 1} {escape(s.name)}: {escape(name)}</title></line>')
        parts.append(f'<text x="{x + 2:.1f}" y="{y}" font-size="9" fill="{color}">{escape(name)}</text>')
    metric = SPAN_METRIC.get(s.name, "")
    value = s.metrics.get(metric, float("inf"))
    if len(s.marks) >= 2 and np.isfinite(value):
        xa, xb = (x0 + f * scale for f in (min(s.marks.values()), max(s.marks.values())))
        label = f"{metric.removesuffix('_ms')} {value:g} ms"
        parts.append(f'<line class="span" x1="{xa:.1f}" y1="85" x2="{xb:.1f}" y2="85" stroke="#333" '
                     f'stroke-width="2"/><text class="latency" x="{xa:.1f}" y="83" font-size="10">'
                     f'{escape(label)}</text>')
    return parts


def timeline_svg(r: CallReport, width: int = 960) -> str:
    """Caller and agent levels on one frame clock over shaded bars of their speech (the caller's utterances, the
    agent's audio runs), with each step's span (green passed, red failed), its marks
    (the caller's onset and the agent's stop of a barge-in, ...) and the latency or reaction measured between."""
    n = max(len(r.sent_db), len(r.heard_db), 1)
    x0, scale = 90.0, (width - 100) / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="240" font-family="sans-serif" '
             f'font-size="11">']
    tracks = (("caller", r.sent_db, 10, "#1f77b4", r.caller_speech, "caller-speech"),
              ("agent", r.heard_db, 90, "#ff7f0e", r.agent_audio, "agent-audio"))
    for label, levels, top, color, runs, who in tracks:
        parts.append(f'<text x="4" y="{top + 40}">{label}</text>')
        parts.append(f'<rect x="{x0}" y="{top}" width="{n * scale:.1f}" height="70" fill="#f6f6f6"/>')
        parts.append(_segments(runs, who, x0, scale, top, color))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1" '
                     f'points="{_envelope(levels, x0, scale, top, 70)}"/>')
    for s in r.steps:
        xa, xb = x0 + s.start_frame * scale, x0 + max(s.end_frame, s.start_frame + 1) * scale
        color = "#2ca02c" if s.ok else "#d62728"
        parts.append(f'<rect x="{xa:.1f}" y="170" width="{xb - xa:.1f}" height="14" fill="{color}" opacity="0.7">'
                     f'<title>{escape(s.name)} {escape(s.message)}</title></rect>')
        y = 198 + (s.index % 3) * 12  # staggered, so short neighbouring steps stay readable
        parts.append(f'<text x="{xa:.1f}" y="{y}">{s.index + 1} {escape(s.name)}</text>')
        if s.transcript is not None:  # on the agent's track, cut to the step's span
            room = max(12, int((xb - xa) / 6))
            text = s.transcript if len(s.transcript) <= room else s.transcript[: room - 1] + "\u2026"
            parts.append(f'<text x="{xa:.1f}" y="102" fill="#7a3d00">\u201c{escape(text)}\u201d'
                         f'<title>{escape(s.transcript)}</title></text>')
        parts += _marks_svg(s, x0, scale)
    seconds = n / 50
    for t in range(0, int(seconds) + 1, max(1, int(seconds // 10) or 1)):
        parts.append(f'<text x="{x0 + t * 50 * scale:.1f}" y="168" fill="#888">{t}s</text>')
    parts.append("</svg>")
    return "".join(parts)


def series(reports: list[CallReport]) -> dict[str, tuple[list[float], list[float]]]:
    """Every finite measurement over the calls, by name: (call start times, values)."""
    out: dict[str, tuple[list[float], list[float]]] = {}

    def add(name: str, t: float, v: float | None) -> None:
        if v is not None and np.isfinite(v):
            ts, vs = out.setdefault(name, ([], []))
            ts.append(t)
            vs.append(float(v))

    for r in reports:
        add("answer_ms", r.started, None if r.answer_s is None else r.answer_s * 1000)
        for s in r.steps:
            for k, v in s.metrics.items():
                add(f"{s.name}.{k}", r.started, v)
        if r.rtp:
            for k in ("rx_loss_pct", "rx_jitter_ms", "mos"):
                add(f"rtp.{_scaled(r.rtp, k)}", r.started, r.rtp.get(k))
    return out


def load_section(reports: list[CallReport]) -> str:
    """Per measurement: a histogram over all calls and its percentiles over the run."""
    out = ["<h2>Load: distributions and percentiles over time</h2>"]
    for name, (times, values) in series(reports).items():
        unit = name.rsplit("_", 1)[-1] if "_" in name else ""
        out.append(f"<div class='load'><h3>{escape(name)}</h3>{histogram_svg(values, name, unit)}"
                   f"{percentiles_svg(times, values, name + ' over time', unit)}</div>")
    return "\n".join(out)


def html(reports: list[CallReport], path: Path, max_calls: int = 50, load: bool = False) -> None:
    """A self-contained page: the summary, in load mode the charts, then each call's steps and timeline (the
    first `max_calls`)."""
    passed = sum(r.passed for r in reports)
    out = ["<!doctype html><meta charset='utf-8'><title>voicegate simulate</title>",
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 6px}.ok{color:#2ca02c}.x{color:#d62728}</style>",
           f"<h1>voicegate simulate: {passed} passed, {len(reports) - passed} failed</h1>",
           f"<pre>{escape(summary(reports))}</pre>"]
    if load and reports:
        out.append(load_section(reports))
    for i, r in enumerate(reports[:max_calls]):
        cls = "ok" if r.passed else "x"
        out.append(f"<h2 class='{cls}'>{i + 1}. {escape(r.script)}: {'PASS' if r.passed else 'FAIL'}</h2>")
        out.append(f"<p>{escape(r.target)}, SIP {r.status}, codec {escape(r.codec or '-')}, answer "
                   f"{r.answer_s if r.answer_s is not None else '-'} s, {r.duration_s:.1f} s{_seed(r)} "
                   f"{escape(r.error)}</p>")
        if r.rtp:
            out.append(f"<p class='rtp'>RTP: {escape(rtp_line(r))}</p>")
        if r.false_barge_ins is not None:
            out.append(f"<p class='false-barge-ins'>False barge-ins: {r.false_barge_ins}</p>")
        out.append("<table><tr><th>#</th><th>step</th><th>result</th><th>s</th><th>measured</th><th>heard</th>"
                   "<th>why</th></tr>")
        for s in r.steps:
            out.append(f"<tr><td>{s.index + 1}</td><td>{escape(s.name)}</td>"
                       f"<td class='{'ok' if s.ok else 'x'}'>{'ok' if s.ok else 'failed'}</td><td>{s.seconds:.2f}</td>"
                       f"<td>{escape(_fmt_metrics(s.metrics))}</td><td>{escape(s.transcript or '')}</td>"
                       f"<td>{escape(s.message)}</td></tr>")
        out.append("</table>")
        out.append(timeline_svg(r))
    if len(reports) > max_calls:
        out.append(f"<p>{len(reports) - max_calls} more calls are in the JSON and JUnit reports.</p>")
    path.write_text("\n".join(out))
