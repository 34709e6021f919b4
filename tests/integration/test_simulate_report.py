"""The load-mode HTML report, opened in headless Chromium (Debian `chromium`): its charts render."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.integration.peers import VENV_BIN, Gateway, rtp_range

ECHO_CALL = """\
name: short echo call
steps:
  - say: "testing one two three"
    wait: false
  - wait_speech: {timeout_s: 5}             # its echo
  - wait: 0.5
  - hangup: {}
"""


def chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={cwd / 'profile'}", "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def test_load_report_charts_render_in_chromium(gateway: Gateway, workdir: Path):
    p = workdir / "echo.yaml"
    p.write_text(ECHO_CALL)
    lo, _ = rtp_range(1000)
    page = workdir / "load.html"
    r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(p), "--target",
                        f"sip:echo@127.0.0.1:{gateway.port}", "--calls", "6", "--concurrency", "3", "--rate", "3",
                        "--rtp-port", str(lo), "--html", str(page)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    dom = chromium("--dump-dom", page.as_uri(), cwd=workdir)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    names = re.findall(r"<h3>([^<]+)</h3>", html)
    assert {"answer_ms", "wait_speech.latency_ms", "rtp.mos"} <= set(names), names
    charts = re.findall(r'<svg [^>]*class="chart"', html)
    assert len(charts) == 2 * len(names)
    assert html.count('class="bar"') >= len(names) and html.count('class="p95"') == len(names)
    assert "<script" not in html.lower() and "Uncaught" not in dom.stderr
    calls = html.split('<h2 class="')[1:]
    assert len(calls) == 6
    for call in calls:  # each timeline: both waveforms over the bars of the caller's words and of their echo
        timeline = call[call.index("<svg"):]
        assert timeline.count("<polyline") == 2, timeline[:500]
        assert timeline.count('class="segment caller-speech"') == 1, timeline[:500]
        assert timeline.count('class="segment agent-audio"') >= 1, timeline[:500]
    shot = workdir / "load.png"
    s = chromium(f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri(), cwd=workdir)
    assert s.returncode == 0 and shot.stat().st_size > 20_000, s.stderr[-2000:]
