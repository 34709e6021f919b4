"""Bad input gets the right SIP status and nothing else breaks; dead calls end by themselves; SIGTERM drains."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.peers import (
    ROOT,
    VENV_BIN,
    Gateway,
    ack,
    call,
    free_port,
    invite,
    invite_scenario,
    rtp_range,
    sipp,
    start_gateway,
)

PCMU = """v=0
o=user1 53655765 2353687637 IN IP4 [local_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000"""

OPUS_ONLY = PCMU.replace("RTP/AVP 0", "RTP/AVP 96").replace("0 PCMU/8000", "96 opus/48000/2")

BROKEN_SDP = """v=0
o=garbage
m=audio notaport RTP/AVP x
c=IN IP4"""


def _status_lines(log: Path) -> list[str]:
    return re.findall(r"SIP/2.0 \d+ [^\r\n]*", log.read_text())


@pytest.mark.parametrize(("name", "sdp", "expect"), [("no-common-codec", OPUS_ONLY, 488), ("bad-sdp", BROKEN_SDP, 400)])
def test_bad_offer_is_refused_and_the_next_call_works(gateway: Gateway, workdir: Path, name, sdp, expect):
    (workdir / "s.xml").write_text(invite_scenario(sdp, expect))
    r = sipp(["-sf", "s.xml", "-s", "demo", f"127.0.0.1:{gateway.port}", "-trace_msg", "-message_file", "m.log"],
             workdir)
    assert r.returncode == 0, _status_lines(workdir / "m.log")
    res = call(f"sip:echo@127.0.0.1:{gateway.port}", "--duration", "1")
    assert res["status"] == 200 and res["answered"]


def _small_config(port: int, **timeouts: float) -> str:
    lo, hi = rtp_range(40)
    return yaml.safe_dump({
        "sip": {"listen": "127.0.0.1", "port": port},
        "rtp": {"port_min": lo, "port_max": hi},
        "timeouts": timeouts,
        "agents": {
            "echo": {"type": "echo"},
            "quiet": {"type": "scripted", "voice": "en", "start": "a",
                      "nodes": {"a": [{"say": "Hello."}, {"pause_s": 30}]}},
        },
        "routes": [{"match": "echo", "agent": "echo"}, {"match": "quiet", "agent": "quiet"}],
    })


@pytest.fixture
def small_gateway(tmp_path: Path):
    started: list[Gateway] = []

    def start(**timeouts: float) -> Gateway:
        port = free_port()
        gw = start_gateway(_small_config(port, **timeouts), tmp_path, port)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def test_rtp_inactivity_hangs_up(small_gateway, workdir: Path):
    gw = small_gateway(rtp_inactivity_s=2)
    # sipp's built-in uac sends no RTP at all
    sipp(["-sn", "uac", "-s", "echo", f"127.0.0.1:{gw.port}", "-d", "8000", "-timeout", "15"], workdir, timeout=30)
    ev = gw.wait_event("call_end", 15)
    assert ev["reason"] == "rtp_timeout"
    assert gw.events("call_timeout")[0]["idle_s"] >= 2


def test_max_call_length(small_gateway):
    gw = small_gateway(max_call_s=2)
    res = call(f"sip:echo@127.0.0.1:{gw.port}", "--duration", "8")
    assert res["remote_hangup"] and res["duration_s"] < 6
    assert gw.wait_event("call_end", 5)["reason"] == "max_call_length"


def test_caller_silence_reprompts_then_hangs_up_politely(small_gateway):
    gw = small_gateway(silence_reprompt_s=1.5, silence_hangup_s=3)
    res = call(f"sip:quiet@127.0.0.1:{gw.port}", "--duration", "20")
    assert res["remote_hangup"]
    said = [e["text"] for e in gw.events("agent_say")]
    assert said[0] == "Hello." and said[1] == "Are you still there?" and said[2].endswith("Goodbye.")
    assert gw.wait_event("call_end", 5)["reason"] == "caller_silence"


def test_sigterm_refuses_new_calls_and_ends_running_ones(small_gateway, workdir: Path):
    gw = small_gateway(shutdown_grace_s=2)
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(call(f"sip:echo@127.0.0.1:{gw.port}", "--duration", "15")))
    t.start()
    gw.wait_event("call_answered", 10)
    gw.proc.send_signal(15)
    gw.wait_event("gateway_draining", 5)
    (workdir / "s.xml").write_text(invite_scenario(PCMU, 503))
    r = sipp(["-sf", "s.xml", "-s", "echo", f"127.0.0.1:{gw.port}"], workdir)
    assert r.returncode == 0, r.stdout[-2000:]
    t.join(30)
    assert result["remote_hangup"] and result["duration_s"] < 10
    assert gw.proc.wait(15) == 0
    assert gw.wait_event("call_end", 1)["reason"] == "shutdown"
    assert not any("Assertion" in line or "Segmentation" in line for line in gw.lines)


def test_check_names_each_error_and_serve_refuses(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sip:\n  port: 0\nagents: {}\nroutes:\n  - match: '*'\n    agent: ghost\n")
    r = subprocess.run([str(VENV_BIN / "voicegate"), "check", str(bad)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"{bad}:2: sip.port:" in r.stderr
    r = subprocess.run([str(VENV_BIN / "voicegate"), "serve", "--config", str(bad)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "not starting" in r.stderr
    r = subprocess.run([str(VENV_BIN / "voicegate"), "check", str(ROOT / "voicegate.yaml")], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_serve_refuses_a_voice_that_does_not_load_naming_its_line(tmp_path: Path):
    """The file validates (the model file is there) but piper cannot load it: serve stops before answering a call."""
    model = tmp_path / "broken.onnx"
    for f in (model, tmp_path / "broken.onnx.json"):
        f.write_bytes(b"junk")
    cfg = tmp_path / "vg.yaml"
    cfg.write_text(f"sip:\n  port: {free_port()}\nagents:\n  desk:\n    type: cascaded\n    voice: {model}\n"
                   "routes:\n  - match: '*'\n    agent: desk\n")
    r = subprocess.run([str(VENV_BIN / "voicegate"), "serve", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"{cfg}:6: agents.desk.voice: piper: cannot load model {model}" in r.stderr, r.stderr[-2000:]
    # with workers, the first worker's refusal stops the supervisor instead of a restart loop
    r = subprocess.run([str(VENV_BIN / "voicegate"), "serve", "--config", str(cfg), "--workers", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"{cfg}:6: agents.desk.voice:" in r.stderr and "worker_refused_config" in r.stderr, r.stderr[-2000:]


def test_port_in_use_is_a_clear_error(tmp_path: Path):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(_small_config(port))
        r = subprocess.run([str(VENV_BIN / "voicegate"), "serve", "--config", str(cfg)], capture_output=True,
                           text=True, timeout=60)
    assert r.returncode == 3
    assert f"cannot listen on udp 127.0.0.1:{port}" in r.stderr


SESSION_TIMERS = ["Supported: timer", "Session-Expires: 120;refresher=uac", "Min-SE: 90"]
SESSION_TIMER_CALL = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="call asking for session timers">
{invite(PCMU, SESSION_TIMERS)}  <recv response="200" rrs="true">
    <action>
      <ereg regexp="[0-9]+;refresher=uac" search_in="hdr" header="Session-Expires:" check_it="true" assign_to="se"/>
    </action>
  </recv>
{ack(200)}  <pause milliseconds="500"/>
  <send retrans="500"><![CDATA[
BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[last_From:]
[last_To:]
Call-ID: [call_id]
CSeq: 2 BYE
Contact: sip:sipp@[local_ip]:[local_port]
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
  <Reference variables="se"/>
</scenario>
"""


def test_session_timer_is_granted(gateway: Gateway, workdir: Path):
    (workdir / "st.xml").write_text(SESSION_TIMER_CALL)
    r = sipp(["-sf", "st.xml", "-s", "echo", f"127.0.0.1:{gateway.port}", "-trace_msg", "-message_file", "m.log"],
             workdir)
    assert r.returncode == 0, _status_lines(workdir / "m.log")
    assert re.search(r"Session-Expires: *120;refresher=uac", (workdir / "m.log").read_text())
