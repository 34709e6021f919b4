"""`voicegate simulate` against a SIP peer that is not voicegate: baresip (Debian) answering on its own, playing
one of Asterisk's recorded prompts."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from media.emodel import delay_impairment, mos
from tests import audio
from tests.integration.peers import free_port, rtp_range
from tests.integration.test_simulate_options import report, run
from tests.prompts import SOUNDS

PROMPT = SOUNDS / "tt-weasels.wav"
"""'Weasels have eaten our phone system' (Asterisk's transcript)."""

SCRIPT = """\
name: baresip answers
codecs: [G722]
steps:
  - expect_speech: {any_of: [weasels, phone system], timeout_s: 5, silence_s: 0.8}
  - say: "hello baresip"
  - hangup: {}
"""


def baresip_uas(workdir: Path, wav: Path, port: int) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """baresip listening on `port` (G.722 only), answering every call at once and speaking `wav` (16 kHz mono:
    aufile plays at the codec's rate) into it; its sndfile module records what it hears into the config folder."""
    conf = workdir / "baresip"
    conf.mkdir()
    lo, hi = rtp_range(20)
    (conf / "config").write_text("\n".join([
        "poll_method epoll",
        f"sip_listen 127.0.0.1:{port}",
        "audio_player alsa,null",
        "audio_alert alsa,null",
        f"audio_source aufile,{wav}",
        f"rtp_ports {lo}-{hi}",
        "module_path /usr/lib/baresip/modules",
        *(f"module {m}.so" for m in ("g722", "aufile", "alsa", "sndfile")),
        "module_app account.so",
        "module_app menu.so",  # answers the calls of an answermode=auto account
        f"snd_path {conf}",
    ]) + "\n")
    (conf / "accounts").write_text("<sip:baresip@127.0.0.1>;regint=0;answermode=auto\n")
    proc = subprocess.Popen(["baresip", "-f", str(conf), "-t", "60"], cwd=conf, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready = threading.Event()
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "baresip is ready" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(15), "baresip did not start:\n" + "".join(lines[-30:])
        yield proc, conf
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def baresip(workdir: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    x = np.concatenate([np.zeros(8000), audio.read_wav(PROMPT), np.zeros(16000 * 20)])  # baresip hangs up at its end
    port = free_port()
    for proc, conf in baresip_uas(workdir, audio.write_wav(workdir / "prompt.wav", x), port):
        yield proc, conf, port


def test_a_script_passes_against_baresip(baresip: tuple[subprocess.Popen[str], Path, int], workdir: Path):
    """baresip answers (auto-answer) in G.722, the simulator transcribes its prompt, speaks, and hangs up;
    baresip heard the caller (its recording of the call) and stays up; the call is rated on the wideband scale."""
    proc, conf, port = baresip
    r = run(workdir, SCRIPT, f"sip:baresip@127.0.0.1:{port}", "--junit", str(workdir / "j.xml"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = report(workdir)
    assert rep["status"] == 200 and rep["codec"] == "G722/16000" and rep["answer_s"] < 2
    heard = rep["steps"][0]
    assert heard["ok"] and "weasels" in heard["transcript"].lower(), heard
    q = rep["rtp"]
    assert q["rx_packets"] > 100 and q["rx_loss_pct"] == 0
    # a clean G.722 line on the wideband E-model: R = 129 - Ie,WB 13 - Idd (0 up to 100 ms one way; a busy machine
    # can fill the jitter buffer past that)
    assert q["r_scale"] == 129 and q["r_factor"] == pytest.approx(116 - delay_impairment(q["delay_ms"]), abs=0.1), q
    assert q["mos"] == pytest.approx(mos(q["r_factor"], wideband=True), abs=0.01) and q["mos"] > 4.0, q
    dec = sorted(conf.glob("dump-*-dec.wav"))
    assert dec, "baresip recorded nothing"
    e = audio.read_wav(dec[-1])
    assert audio.rms_db(e) > -50, "baresip heard silence"
    assert proc.poll() is None
