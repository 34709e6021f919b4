"""`voicegate simulate` script options on the wire: dial headers, From/To and digest credentials, transfers and
DTMF round trips."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.integration.peers import VENV_BIN, Gateway, free_port, reply, rtp_range

DIAL = """\
name: dial options
dial:
  headers: {X-Customer-Id: "C-1234", User-to-User: "56a390f3d2b7310023a2;encoding=hex"}
  from: {user: qa-bot, display: QA Bot}
  to: {user: echo, display: Echo Desk}
steps:
  - say: "hello"
  - hangup: {}
"""


def run(tmp: Path, text: str, target: str, *extra: str, env: dict[str, str] | None = None,
        timeout: float = 90) -> subprocess.CompletedProcess[str]:
    p = tmp / "s.yaml"
    p.write_text(text)
    lo, _ = rtp_range(100)
    return subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(p), "--target", target, "--rtp-port", str(lo),
                           "--json", str(tmp / "r.json"), *extra], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def report(tmp: Path) -> dict:
    [r] = json.loads((tmp / "r.json").read_text())
    return dict(r)


def test_dial_headers_and_parties_reach_voicegate(gateway: Gateway, workdir: Path):
    r = run(workdir, DIAL, f"sip:echo@127.0.0.1:{gateway.port}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    inc = next(e for e in reversed(gateway.events("call_incoming")) if "X-Customer-Id" in e["sip_headers"])
    assert inc["sip_headers"]["X-Customer-Id"] == "C-1234"
    assert inc["sip_headers"]["User-to-User"] == "56a390f3d2b7310023a2;encoding=hex"
    assert inc["caller"].startswith('"QA Bot" <sip:qa-bot@127.0.0.1') and inc["called"] == "echo"
    end = gateway.wait_event("call_end", 10, call=inc["call"])
    assert end["sip_headers"]["X-Customer-Id"] == "C-1234"


UAS_SDP = """v=0
o=- 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000"""
CHALLENGE = 'WWW-Authenticate: Digest realm="sim.test", nonce="n[pid]x[call_number]", algorithm=MD5, qop="auth"'


def digest_uas(password: str) -> str:
    """A sipp UAS that challenges the INVITE (401) and answers 200 only to the right digest response (403 else)."""
    contact = ["Contact: <sip:[local_ip]:[local_port];transport=[transport]>"]
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="digest uas">
  <recv request="INVITE"/>
{reply("401 Unauthorized", [CHALLENGE], tag=True)}  <recv request="ACK"/>
  <recv request="INVITE" check_it="true">
    <action><verifyauth assign_to="authvalid" username="alice" password="{password}"/></action>
  </recv>
  <nop hide="true" test="authvalid" next="good"/>
{reply("403 Forbidden", tag=True, attrs='next="refused"')}  <label id="good"/>
{reply("200 OK", contact, UAS_SDP, tag=True)}  <recv request="ACK"/>
  <recv request="BYE"/>
{reply("200 OK", attrs='next="end"')}  <label id="refused"/>
  <recv request="ACK"/>
  <label id="end"/>
</scenario>
"""


AUTH = """\
name: digest
expect_status: {status}
dial:
  to: {{user: front-desk, display: Front Desk}}
  headers: {{X-Campaign: spring}}
  auth: {{username: alice, password_env: VG_SIM_TEST_PW}}
"""


def test_digest_credentials_answer_a_challenge(workdir: Path):
    """A challenging sipp UAS checks the digest response: the right password gets the call, a wrong one 403; the
    INVITE goes to the target's Request-URI with the script's To and headers."""
    for password, status in (("s3cret", 200), ("guessed", 403)):
        port = free_port()
        (workdir / "uas.xml").write_text(digest_uas("s3cret"))
        uas = subprocess.Popen(["sipp", "-sf", "uas.xml", "-i", "127.0.0.1", "-p", str(port),
                                "-mp", str(rtp_range(10)[0]), "-rtp_echo", "-nostdin", "-m", "1", "-timeout", "40",
                                "-trace_msg", "-message_file", "m.log"], cwd=workdir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            script = AUTH.format(status=status) + ("steps:\n  - wait: 0.5\n  - hangup: {}\n" if status == 200 else "")
            r = run(workdir, script, f"sip:service@127.0.0.1:{port}", env={"VG_SIM_TEST_PW": password})
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
            assert report(workdir)["status"] == status
            assert uas.wait(20) == 0  # the scenario ran to its end on either branch
        finally:
            if uas.poll() is None:
                uas.kill()
                uas.wait(5)
        log = (workdir / "m.log").read_text()
        assert f"INVITE sip:service@127.0.0.1:{port} SIP/2.0" in log
        assert 'To: "Front Desk" <sip:front-desk@127.0.0.1' in log and "X-Campaign: spring" in log
        assert 'Authorization: Digest username="alice", realm="sim.test"' in log
        (workdir / "m.log").unlink()


def test_a_missing_password_variable_is_named_with_its_line(workdir: Path):
    r = run(workdir, AUTH.format(status=200), "sip:x@127.0.0.1:9", env={"VG_SIM_TEST_PW": ""}, timeout=30)
    assert r.returncode == 2
    assert "s.yaml:6: dial.auth.password_env" in r.stderr and "VG_SIM_TEST_PW" in r.stderr, r.stderr


TRANSFER = """\
name: transfer
steps:
  - expect_transfer: {to: "%s", timeout_s: 10}
  - expect_speech: {contains: [sorry], timeout_s: 10}   # "Sorry, the transfer failed." (espeak)
  - hangup: {}
"""


def test_expect_transfer_against_the_xfer_agent(gateway: Gateway, workdir: Path):
    """The xfer agent REFERs to sip:operator@example.com (the phone declines it, and the agent says so)."""
    r = run(workdir, TRANSFER % "sip:operator@*", f"sip:xfer@127.0.0.1:{gateway.port}", timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    step = report(workdir)["steps"][0]
    assert step["ok"] and 0 < step["metrics"]["after_s"] < 10
    r = run(workdir, TRANSFER % "/^sip:sales@/", f"sip:xfer@127.0.0.1:{gateway.port}", timeout=120)
    assert r.returncode == 1
    step = report(workdir)["steps"][0]
    assert not step["ok"] and step["message"] == "transferred to sip:operator@example.com, expected /^sip:sales@/"


DTMF_REPLY = """\
name: dtmf round trip
steps:
  - wait_speech: {timeout_s: 5}
  - wait_silence: {min_s: 1.2, timeout_s: 20}
  - dtmf: "2"
    expect_reply_ms: %d
  - hangup: {}
"""


def test_dtmf_round_trip_is_measured(gateway: Gateway, workdir: Path):
    """The demo menu answers key 2 with the time: reply_ms is the key to the agent's next onset."""
    r = run(workdir, DTMF_REPLY % 2000, f"sip:demo@127.0.0.1:{gateway.port}", "--junit", str(workdir / "j.xml"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    reply = report(workdir)["steps"][2]["metrics"]["reply_ms"]
    assert 0 < reply <= 2000
    assert f"03 dtmf.reply_ms\" value=\"{reply:g}\"" in (workdir / "j.xml").read_text()
    assert f"reply_ms={reply:g}" in r.stdout
    r = run(workdir, DTMF_REPLY % 1, f"sip:demo@127.0.0.1:{gateway.port}")
    assert r.returncode == 1
    step = report(workdir)["steps"][2]
    assert not step["ok"] and step["message"].startswith("the agent answered the keys after ")


LISTEN = """\
name: rtp quality
steps:
  - say: "testing one two three, testing one two three"
  - wait: 5
  - hangup: {}
"""


def test_rtp_statistics_and_mos_fall_with_loss(gateway: Gateway, workdir: Path):
    """Echo calls of ~8 s (one RTCP report each way): a clean line scores G.711's best MOS, --loss 8 clearly less."""
    quality = {}
    for loss in (0, 8):
        r = run(workdir, LISTEN, f"sip:echo@127.0.0.1:{gateway.port}", "--loss", str(loss),
                "--junit", str(workdir / "j.xml"), "--html", str(workdir / "r.html"))
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        q = report(workdir)["rtp"]
        assert q["rx_packets"] > 300 and q["tx_packets"] > 300, q
        assert "rtp: rx loss" in r.stdout and f"MOS {q['mos']:.2f}" in r.stdout
        assert f'name="rtp.mos" value="{q["mos"]:g}"' in (workdir / "j.xml").read_text()
        assert "RTP: rx loss" in (workdir / "r.html").read_text()
        quality[loss] = q
    clean, lossy = quality[0], quality[8]
    assert clean["rx_loss_pct"] == 0 and clean["mos"] >= 4.3, clean
    assert 3 < lossy["rx_loss_pct"] < 15, lossy  # the relay drops at random: 8% give or take
    assert lossy["mos"] < clean["mos"] - 0.3, (clean, lossy)


def test_a_seed_drops_the_same_packets_again(gateway: Gateway, workdir: Path):
    """--loss goes through a seeded relay: the same seed drops the same RTP packets each way, another seed others;
    pjmedia counts the relay's drops as the far end's losses."""
    runs = []
    for seed in (7, 8):
        r = run(workdir, LISTEN, f"sip:echo@127.0.0.1:{gateway.port}", "--loss", "10", "--seed", str(seed))
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert f"seed {seed}:0, 10% loss" in r.stdout
        rep = report(workdir)
        imp, q = rep["impairment"], rep["rtp"]
        assert imp["rx_packets"] > 300 and imp["tx_packets"] > 300, imp
        # what the relay dropped towards the phone is what the phone's stream found missing
        assert abs(q["rx_lost"] - len(imp["rx_dropped"])) <= 2, (q, imp)
        runs.append({k: [i for i in imp[k] if i < 300] for k in ("rx_dropped", "tx_dropped")})
    assert runs[0]["rx_dropped"] and runs[0]["tx_dropped"]
    assert runs[0]["rx_dropped"] != runs[1]["rx_dropped"] and runs[0]["tx_dropped"] != runs[1]["tx_dropped"]
    # the same seed again, in load mode: the n-th call's drops depend on the seed and n alone, so call 0 drops what
    # the single call with seed 7 did, and call 1 others
    lo, _ = rtp_range(400)
    r = run(workdir, LISTEN, f"sip:echo@127.0.0.1:{gateway.port}", "--loss", "10", "--seed", "7", "--calls", "2",
            "--concurrency", "2", "--rate", "5", "--rtp-port", str(lo))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    load = {rep["impairment"]["seed"]: rep["impairment"] for rep in json.loads((workdir / "r.json").read_text())}
    assert set(load) == {"7:0", "7:1"}
    first = {n: {k: [i for i in load[n][k] if i < 300] for k in ("rx_dropped", "tx_dropped")} for n in load}
    assert first["7:0"] == runs[0] and first["7:1"] != runs[0]


JITTERY = """\
name: jittery line
steps:
  - say: "testing one two three, testing one two three"
    wait: false
  - expect_speech: {any_of: [testing, one], timeout_s: 5, silence_s: 0.8}
  - hangup: {}
"""


def test_jitter_and_reordering_are_measured_and_the_jitter_buffers_cope(gateway: Gateway, workdir: Path):
    """An echo call through the relay with --jitter 20 --reorder 5 each way: the gateway's and the phone's jitter
    buffers put the packets back in order, so the caller still hears its own words; its RTP statistics show the
    jitter, far above the same call's on a clean line, and the relay's report what it reordered."""
    jitter = {}
    for extra in ((), ("--jitter", "20", "--reorder", "5", "--seed", "3")):
        r = run(workdir, JITTERY, f"sip:echo@127.0.0.1:{gateway.port}", *extra)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        jitter[bool(extra)] = report(workdir)["rtp"]["rx_jitter_ms"]
    rep = report(workdir)
    imp, q = rep["impairment"], rep["rtp"]
    assert imp["line"] == {"loss_pct": 0.0, "jitter_ms": 20.0, "reorder_pct": 5.0, "skew_ppm": 0.0}
    assert imp["rx_packets"] > 100 and imp["rx_dropped"] == [] and imp["rx_reordered"] and imp["tx_reordered"]
    assert 10 < imp["rx_delay_ms"] < 40, imp
    # a clean loopback line measured 2-4 ms on a busy machine (the pjsua2 clocks' own jitter), this one ~11 ms
    assert 4 < q["rx_jitter_ms"] < 40 and jitter[True] > jitter[False] + 3, jitter
    assert "seed 3:0, jitter 20 ms, 5% reordered: dropped 0/" in r.stdout and "mean added delay" in r.stdout


TCP_ECHO = """\
name: over tcp
steps:
  - say: "hello, testing one two three"
    wait: false
  - wait_speech: {timeout_s: 3}
  - wait: 1
  - hangup: {}
"""


def test_the_impairment_relay_reaches_a_tcp_only_target(workdir: Path):
    """A sipp UAS that listens on TCP alone (and echoes RTP): the phone's proxy carries the signalling over TCP,
    the relay jitters the media, and the caller hears its echo."""
    port = free_port()
    uas = subprocess.Popen(["sipp", "-sn", "uas", "-t", "t1", "-i", "127.0.0.1", "-p", str(port),
                            "-mp", str(rtp_range(10)[0]), "-rtp_echo", "-nostdin", "-m", "1", "-timeout", "40"],
                           cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = run(workdir, TCP_ECHO, f"sip:service@127.0.0.1:{port};transport=tcp", "--jitter", "10", "--seed", "1")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        rep = report(workdir)
        assert rep["status"] == 200 and rep["impairment"]["rx_packets"] > 40, rep
        assert uas.wait(20) == 0  # sipp saw the call through to the BYE
    finally:
        if uas.poll() is None:
            uas.kill()
            uas.wait(5)
