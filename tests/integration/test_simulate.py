"""`voicegate simulate` against a running voicegate: pass, fail, and a broken script."""

from __future__ import annotations

import json
import subprocess
import wave
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from tests import audio
from tests.integration.peers import VENV_BIN, Gateway, rtp_range
from tests.integration.test_simulate_report import chromium

DEMO = """\
name: demo menu
steps:
  - wait_speech: {timeout_s: 5}
  - wait_silence: {min_s: 1.2, timeout_s: 20}
  - dtmf: "3"
  - wait_speech: {timeout_s: 5}
  - backchannel: {say: "uh-huh", after_ms: 1500, expect_continue_s: 1.5}
  - interrupt: {say: "Sorry, can I stop you there?", after_ms: 1500, expect_stop_ms: 500}
  - hangup: {}
"""

NO_HANGUP = """\
name: expects a hang-up that never comes
steps:
  - wait_speech: {timeout_s: 5}
  - expect_hangup: {timeout_s: 1}
  - say: never said
"""


def simulate(gw: Gateway, tmp: Path, *scripts: str, user: str = "demo") -> tuple[subprocess.CompletedProcess[str],
                                                                                 Path]:
    paths = []
    for i, text in enumerate(scripts):
        p = tmp / f"s{i}.yaml"
        p.write_text(text)
        paths.append(str(p))
    out = tmp / "junit.xml"
    lo, _ = rtp_range(100)
    r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", *paths, "--target", f"sip:{user}@127.0.0.1:{gw.port}",
                        "--junit", str(out), "--html", str(tmp / "report.html"), "--rtp-port", str(lo),
                        "--json", str(tmp / "report.json")],
                       capture_output=True, text=True, timeout=120)
    return r, out


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_example_scripts_pass_against_voicegate(gateway: Gateway, workdir: Path):
    paths = sorted(str(p) for p in SCRIPTS.glob("demo-*.yaml"))
    assert len(paths) >= 3
    lo, _ = rtp_range(100)
    r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", *paths, "--target",
                        f"sip:demo@127.0.0.1:{gateway.port}", "--rtp-port", str(lo), "--json", str(workdir / "r.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert f"{len(paths)} passed, 0 failed" in r.stdout
    calls = {c["script"]: c for c in json.loads((workdir / "r.json").read_text())}
    barge = calls["demo menu and barge-in"]
    assert barge["false_barge_ins"] == 0 and calls["demo echo test"]["false_barge_ins"] is None
    metrics = {s["name"]: s["metrics"] for s in barge["steps"]}
    assert 0 <= metrics["backchannel"]["pause_ms"] <= 1500 and metrics["expect_no_barge_in"]["max_pause_ms"] <= 450


HANDOVER = """\
name: assistant hands over
steps:
  - expect_speech: {any_of: [harbour, harbor]}
  - say: "Can I talk to a person?"
    voice: joe
  - expect_speech: {contains: [operator]}
  - hangup: {}
"""


def test_expect_speech_checks_the_assistants_words(gateway: Gateway, workdir: Path):
    """The example script passes against the cascaded assistant; an expectation it misses reports what was said."""
    (workdir / "handover.yaml").write_text(HANDOVER)
    lo, _ = rtp_range(100)
    r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(SCRIPTS / "assistant-hours.yaml"),
                        str(workdir / "handover.yaml"), "--target", f"sip:assistant@127.0.0.1:{gateway.port}",
                        "--rtp-port", str(lo), "--junit", str(workdir / "j.xml"), "--html", str(workdir / "r.html")],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert "PASS assistant opening hours" in r.stdout and "FAIL assistant hands over" in r.stdout, r.stdout
    hours, handover = ET.parse(workdir / "j.xml").getroot().findall("testsuite")
    assert hours.get("failures") == "0"
    cases = {c.get("name"): c for c in hours.iter("testcase")}
    assert "reception is open" in cases["03 expect_speech"].findtext("system-out", "").lower()
    props = {p.get("name"): float(p.get("value", "nan")) for p in hours.iter("property")}
    assert 0 < props["03 expect_speech.latency_ms"] < 3000 and props["03 expect_speech.duration_s"] > 2
    failed = {c.get("name"): c for c in handover.iter("testcase")}["03 expect_speech"]
    message = failed.find("failure").get("message")
    assert message.startswith("expected 'operator' in ") and "through to reception" in message.lower(), message
    page = (workdir / "r.html").read_text()
    assert page.count("<svg") == 2 and "through to reception" in page.lower()


def test_a_prompt_that_does_not_stop_in_time_fails_with_the_reason(gateway: Gateway, workdir: Path):
    """A 1 ms bound fails with the measured reaction. The caller starts on a vowel (espeak, the same on every run):
    piper's "Sorry, ..." begins with a quiet "s" that the agent may stop on before the onset the reaction is measured
    from (a reaction of 0 ms, which meets any bound; CI rendered one that did so on 3 calls of 3)."""
    caller = audio.scale_to_db(audio.telephone_band(audio.trim(audio.espeak("Oh, I want to stop you there."))), -20.0)
    wav = audio.write_wav(workdir / "caller.wav", caller)
    strict = DEMO.replace('interrupt: {say: "Sorry, can I stop you there?", after_ms: 1500, expect_stop_ms: 500}',
                          f'interrupt: {{play: "{wav}", after_ms: 1500, expect_stop_ms: 1}}')
    assert strict != DEMO
    r, junit = simulate(gateway, workdir, strict)
    [call] = json.loads((workdir / "report.json").read_text())
    [step] = [s for s in call["steps"] if s["name"] == "interrupt"]
    assert r.returncode == 1, (step, r.stdout[-2000:])
    case = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}["06 interrupt"]
    assert "the agent stopped" in case.find("failure").get("message")


MISSING_BRANCH = """\
name: a key the menu does not have
steps:
  - wait_speech: {timeout_s: 5}
  - wait: 4.5                             # into the menu (a key stops it and is collected at once)
  - dtmf: "9"
  - expect_speech: {contains: [time here], timeout_s: 5, max_s: 2.5}   # "The time here is ..." (key 2), cut short
  - hangup: {}
"""


def test_a_missing_dtmf_branch_fails_naming_the_keys_and_the_expectation(gateway: Gateway, workdir: Path):
    r, junit = simulate(gateway, workdir, MISSING_BRANCH)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases["03 dtmf"].find("failure") is None
    message = cases["04 expect_speech"].find("failure").get("message")
    assert message.startswith("after dtmf '9' (step 3): expected 'time here' in "), message
    assert "did not get that" in message.lower(), message  # the demo's answer to a key it has no branch for
    assert " x 04 expect_speech" in r.stdout and "after dtmf '9' (step 3)" in r.stdout


def test_third_party_peer_sipp_uas(workdir: Path):
    from tests.integration.peers import free_port

    port = free_port()
    uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(port), "-mp", str(rtp_range(10)[0]),
                            "-rtp_echo", "-nostdin", "-m", "1", "-timeout", "60"], cwd=workdir,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        script = ("name: sipp answers\nsteps:\n  - say: hello there\n    wait: false\n"
                  "  - wait_speech: {timeout_s: 3}\n  - hangup: {}\n")
        (workdir / "s.yaml").write_text(script)
        lo, _ = rtp_range(100)
        r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(workdir / "s.yaml"), "--target",
                            f"sip:service@127.0.0.1:{port}", "--rtp-port", str(lo)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    finally:
        uas.kill()
        uas.wait(5)


def test_unreachable_target_fails_the_dial_quickly(workdir: Path):
    from tests.integration.peers import free_port

    (workdir / "s.yaml").write_text("name: nobody home\nanswer_timeout_s: 3\nsteps:\n  - hangup: {}\n")
    lo, _ = rtp_range(100)
    target = f"sip:x@127.0.0.1:{free_port()}"
    r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(workdir / "s.yaml"), "--target", target,
                        "--rtp-port", str(lo)], capture_output=True, text=True, timeout=40)
    assert r.returncode == 1
    assert f"FAIL nobody home ({workdir / 's.yaml'}) -> {target}: " in r.stdout and "0 passed, 1 failed" in r.stdout
    [dial] = [line for line in r.stdout.splitlines() if " x dial: " in line]
    assert "no answer within 3.0 s" in dial or "127.0.0.1" in dial, dial  # the timeout, or the target's failure


def test_demo_script_passes_with_timings(gateway: Gateway, workdir: Path):
    r, junit = simulate(gateway, workdir, DEMO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "1 passed, 0 failed" in r.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    names = [c.get("name") for c in suite.iter("testcase")]
    assert names[0] == "00 dial" and names[-1] == "07 hangup"
    props = {p.get("name"): float(p.get("value", "nan")) for p in suite.iter("property")}
    assert props["06 interrupt.reaction_ms"] <= 500
    assert "01 wait_speech.latency_ms" in props
    page = (workdir / "report.html").read_text()
    assert page.count("<svg") == 1 and "6 interrupt" in page and "polyline" in page
    # the barge-in's onset and stop, the backchannel's onset, the reaction and latencies on the timeline
    assert page.count('class="mark caller-onset"') == 2 and page.count('class="mark agent-stop"') == 1
    assert f">reaction {props['06 interrupt.reaction_ms']:g} ms<" in page
    assert f">latency {props['01 wait_speech.latency_ms']:g} ms<" in page
    dom = chromium("--dump-dom", (workdir / "report.html").as_uri(), cwd=workdir)  # as a browser renders it
    assert dom.returncode == 0 and "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    svg = dom.stdout[dom.stdout.index("<svg"):]
    assert svg.count("<polyline") == 2 and svg.count('class="mark caller-onset"') == 2
    assert svg.count('class="segment caller-speech"') == 2  # "uh-huh" and the interruption
    assert svg.count('class="segment agent-audio"') >= 3  # the greeting, the menu, the long message
    assert f">reaction {props['06 interrupt.reaction_ms']:g} ms<" in svg


def test_failed_expectation_fails_the_run_and_the_rest(gateway: Gateway, workdir: Path):
    r, junit = simulate(gateway, workdir, NO_HANGUP)
    assert r.returncode == 1
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases["01 wait_speech"].find("failure") is None
    assert "did not hang up" in cases["02 expect_hangup"].find("failure").get("message")
    assert cases["03 say"].find("failure") is not None


def test_wrong_status_and_broken_script(gateway: Gateway, workdir: Path):
    r, _ = simulate(gateway, workdir, "name: unrouted\nexpect_status: 404\n", user="nobody")
    assert r.returncode == 0, r.stdout
    bad = "name: x\nsteps:\n  - wait_speech: {timeout_s: -1}\n  - dance: {}\n"
    r, _ = simulate(gateway, workdir, bad)
    assert r.returncode == 2
    assert ":3: steps.0" in r.stderr and ":4: steps.1" in r.stderr


ECHO_CALL = """\
name: short echo call
steps:
  - say: "testing one two three"
  - wait: 0.5
  - hangup: {}
"""


def test_load_mode_places_every_call_and_summarises(gateway: Gateway, workdir: Path):
    before = len(gateway.events("call_end"))
    p = workdir / "echo.yaml"
    p.write_text(ECHO_CALL)
    lo, _ = rtp_range(1000)  # four phone processes, 200 ports apart
    r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(p),
                        "--target", f"sip:echo@127.0.0.1:{gateway.port}", "--calls", "8", "--concurrency", "4",
                        "--rate", "4", "--rtp-port", str(lo),
                        "--junit", str(workdir / "j.xml")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "8 passed, 0 failed" in r.stdout and "answer_ms" in r.stdout
    assert len(ET.parse(workdir / "j.xml").getroot().findall("testsuite")) == 8
    gateway.wait_event("call_end", 10)
    assert len(gateway.events("call_end")) - before == 8


SHARED_ECHO = """\
name: echo call beside another
target: sip:echo@127.0.0.1:{port}
steps:
  - wait: 1
  - say: "testing one two three"
    wait: false
  - wait_speech: {{timeout_s: 5}}
  - wait: 1
  - hangup: {{}}
"""

SHARED_BARGE_IN = """\
name: barge-in beside another
target: sip:long@127.0.0.1:{port}
steps:
  - wait_speech: {{timeout_s: 5}}
  - interrupt: {{say: "Sorry, can I stop you there?", after_ms: 1500, expect_stop_ms: 1000}}
  - hangup: {{}}
"""


def test_one_phone_process_holds_two_calls_and_measures_each_on_its_own(gateway: Gateway, workdir: Path):
    """Load mode with --concurrency 2: one phone process (4 calls each by default) places both calls at once, an
    echo call and a barge-in on the long prompt; each report has its own tracks, measurements, RTP statistics and
    WAV, so the echo call heard only its own words back, never the other call's prompt."""
    paths = []
    for name, text in (("echo", SHARED_ECHO), ("barge", SHARED_BARGE_IN)):
        paths.append(str(workdir / f"{name}.yaml"))
        Path(paths[-1]).write_text(text.format(port=gateway.port))
    lo, _ = rtp_range(200)
    r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", *paths, "--calls", "2", "--concurrency", "2",
                        "--rate", "10", "--rtp-port", str(lo), "--json", str(workdir / "r.json"),
                        "--record", str(workdir / "wav")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    calls = {c["script"]: c for c in json.loads((workdir / "r.json").read_text())}
    echo, barge = calls["echo call beside another"], calls["barge-in beside another"]
    assert echo["phone"] == barge["phone"] != 0  # one process
    assert barge["started"] < echo["started"] + echo["duration_s"] and echo["started"] < barge["started"] + barge[
        "duration_s"]  # at the same time
    said, heard = echo["steps"][1], echo["steps"][2]
    assert 0 < heard["metrics"]["latency_ms"] < 1000, heard  # its own words came back
    loud = np.nonzero(np.asarray(echo["heard_db"]) > max(echo["heard_db"]) - 30)[0]
    assert loud.min() >= said["start_frame"], (loud.min(), said)  # nothing before the caller spoke: no prompt
    interrupt = barge["steps"][1]
    assert interrupt["ok"] and 0 <= interrupt["metrics"]["reaction_ms"] <= 1000, interrupt
    # the long prompt played on this call before the caller spoke into it (1.5 s into the agent's talk)
    assert max(barge["heard_db"][: interrupt["marks"]["caller onset"]]) > -40
    for c in (echo, barge):  # each call's RTP statistics count its own packets: one a frame of its own tracks
        assert abs(c["rtp"]["rx_packets"] - len(c["heard_db"])) <= 10, (len(c["heard_db"]), c["rtp"])
        assert abs(c["rtp"]["tx_packets"] - len(c["sent_db"])) <= 10, (len(c["sent_db"]), c["rtp"])
    wavs = sorted((workdir / "wav").glob("*.wav"))
    assert len(wavs) == 2
    for w in wavs:
        with wave.open(str(w)) as f:
            c = echo if "echo" in w.name else barge
            assert f.getnchannels() == 2 and f.getnframes() == 320 * min(len(c["sent_db"]), len(c["heard_db"]))


NOISY_ECHO_CALL = """\
name: echo call with line noise
steps:
  - noise: {snr_db: 30}                     # white noise 30 dB under the caller's words
  - wait: 1
  - say: "testing one two three"
    wait: false
  - wait_speech: {timeout_s: 5}             # the words' echo, not the noise's
  - wait: 0.5
  - hangup: {}
"""


def test_noise_goes_on_the_wire_and_a_30_db_snr_echo_call_passes(gateway: Gateway, workdir: Path):
    p = workdir / "noisy.yaml"
    p.write_text(NOISY_ECHO_CALL)
    lo, _ = rtp_range(100)
    r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(p), "--target",
                        f"sip:echo@127.0.0.1:{gateway.port}", "--rtp-port", str(lo), "--json", str(workdir / "r.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    [call] = json.loads((workdir / "r.json").read_text())
    noise_step, wait_step, _, heard_step = call["steps"][:4]
    level = noise_step["metrics"]["noise_dbfs"]
    assert -60 < level < -40, level  # espeak's words are about 20 dBFS loud
    quiet = slice(wait_step["start_frame"] + 10, wait_step["end_frame"] - 5)  # the caller sends noise alone
    sent, heard = np.median(call["sent_db"][quiet]), np.median(call["heard_db"][quiet])
    assert abs(sent - level) < 1.0, (sent, level)
    # the echo agent returned it: G.711 drops the half of white noise's power above 4 kHz (3 dB)
    assert level - 6 < heard < level + 1, (heard, level)
    assert heard_step["metrics"]["latency_ms"] >= 20  # the noise's echo was not taken for the agent speaking


def test_lossy_line_and_stereo_recording(gateway: Gateway, workdir: Path):
    p = workdir / "echo.yaml"
    p.write_text(ECHO_CALL)
    lo, _ = rtp_range(100)
    r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(p), "--target",
                        f"sip:echo@127.0.0.1:{gateway.port}", "--loss", "5", "--record", str(workdir / "rec"),
                        "--rtp-port", str(lo)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    [wav] = list((workdir / "rec").glob("*.wav"))
    with wave.open(str(wav)) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 16000
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2).astype(np.float64)
    # the caller's words on the left; their echo, through a lossy line, on the right
    assert np.abs(x[:, 0]).max() > 1000 and np.abs(x[:, 1]).max() > 300


def test_a_duration_must_be_positive(workdir: Path):
    p = workdir / "echo.yaml"
    p.write_text(ECHO_CALL)
    r = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(p), "--target", "sip:echo@127.0.0.1:9",
                        "--duration", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--duration takes a positive number of seconds" in r.stderr, r.stderr
