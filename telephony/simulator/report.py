"""Simulation reports: a console summary and JUnit XML (one test case per script step, plus the dial)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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

    @property
    def dial_ok(self) -> bool:
        return self.status == self.expected_status and not self.error

    @property
    def passed(self) -> bool:
        return self.dial_ok and all(s.ok for s in self.steps)


def _fmt_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in metrics.items())


def console(reports: list[CallReport]) -> str:
    lines = []
    for r in reports:
        mark = "PASS" if r.passed else "FAIL"
        lines.append(f"{mark} {r.script} ({r.file}) -> {r.target}: SIP {r.status}, codec {r.codec or '-'}, "
                     f"answer {r.answer_s if r.answer_s is not None else '-'} s, {r.duration_s:.1f} s")
        if not r.dial_ok:
            lines.append(f"  x dial: expected {r.expected_status}, got {r.status} {r.error}".rstrip())
        for s in r.steps:
            lines.append(f"  {'ok' if s.ok else ' x'} {s.index + 1:02d} {s.name} {s.seconds:.2f}s "
                         f"{_fmt_metrics(s.metrics)} {s.message}".rstrip())
    passed = sum(r.passed for r in reports)
    lines.append(f"{passed} passed, {len(reports) - passed} failed")
    return "\n".join(lines)


def summary(reports: list[CallReport]) -> str:
    """Load mode: totals, failures by step, and percentiles of every measurement over all calls."""
    lines = []
    failures: dict[str, int] = {}
    values: dict[str, list[float]] = {"answer_ms": [r.answer_s * 1000 for r in reports if r.answer_s is not None]}
    for r in reports:
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


def junit(reports: list[CallReport], path: Path) -> None:
    root = ET.Element("testsuites")
    for r in reports:
        cases = [("00 dial", r.dial_ok, f"expected SIP {r.expected_status}, got {r.status} {r.error}".strip(),
                  r.answer_s or 0.0)]
        cases += [(f"{s.index + 1:02d} {s.name}", s.ok, s.message, s.seconds) for s in r.steps]
        suite = ET.SubElement(root, "testsuite", name=r.script, tests=str(len(cases)),
                              failures=str(sum(not ok for _, ok, _, _ in cases)), time=f"{r.duration_s:.3f}")
        metrics = [(f"{s.index + 1:02d} {s.name}", s.metrics) for s in r.steps if s.metrics]
        if metrics:  # measurements as suite properties, which JUnit readers show beside the cases
            props = ET.SubElement(suite, "properties")
            for name, m in metrics:
                for k, v in m.items():
                    ET.SubElement(props, "property", name=f"{name}.{k}", value=f"{v:g}")
        for name, ok, message, seconds in cases:
            case = ET.SubElement(suite, "testcase", classname=r.script, name=name, time=f"{seconds:.3f}")
            if not ok:
                ET.SubElement(case, "failure", message=message or "failed")
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
