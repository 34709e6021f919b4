"""Outbound calls through a running voicegate: `voicegate dial` (and `POST /calls`) call a sipp UAS on a trunk,
the agent's audio reaches the callee's RTP socket, the call is recorded as outbound; numbers outside the trunk's
`allowed` patterns and bad tokens are refused."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from media.call_progress import SIT_HZ
from media.g711 import ulaw_decode, ulaw_encode
from telephony.records import read_records
from tests.integration.peers import (
    VENV_BIN,
    Gateway,
    free_port,
    gateway_config,
    reply,
    rtp_range,
    start_gateway,
)
from tests.prompts import SOUNDS

TOKEN = "control-token-for-tests"
CALLER_ID = "+4930555000"


def uas_scenario(rtp_port: int) -> str:
    """sipp answers one INVITE with SDP pointing at the test's RTP socket, then waits for the gateway's BYE."""
    contact = ["Contact: <sip:callee@[local_ip]:[local_port]>"]
    sdp = f"""v=0
o=callee 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio {rtp_port} RTP/AVP 0
a=rtpmap:0 PCMU/8000"""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="callee">
  <recv request="INVITE"/>
{reply("180 Ringing", contact, tag=True)}  <pause milliseconds="300"/>
{reply("200 OK", contact, sdp, tag=True, attrs='retrans="500"')}  <recv request="ACK"/>
  <recv request="BYE" timeout="30000"/>
{reply("200 OK")}</scenario>
"""


def player_scenario(pcap: str) -> str:
    """sipp answers one INVITE and plays `pcap`'s RTP at the gateway from its media port, then waits for BYE."""
    scenario = uas_scenario(0).replace("m=audio 0 ", "m=audio [media_port] ")
    play = f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n'
    return scenario.replace('  <recv request="ACK"/>\n', '  <recv request="ACK"/>\n' + play)


def rtp_pcap(path: Path, pcm8k: bytes) -> None:
    """A pcap of µ-law RTP packets, 20 ms apart, for sipp's play_pcap_audio (which rewrites the addresses)."""
    data = ulaw_encode(pcm8k)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]  # pcap header, Ethernet links
    for i in range(len(data) // 160):
        rtp = struct.pack("!BBHII", 0x80, 0, i, i * 160, 0x1234) + data[i * 160 : (i + 1) * 160]
        udp = struct.pack("!HHHH", 6000, 6002, 8 + len(rtp), 0) + rtp
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0, bytes([127, 0, 0, 1]),
                         bytes([127, 0, 0, 1])) + udp
        frame = bytes(12) + b"\x08\x00" + ip
        out.append(struct.pack("<IIII", i // 50, (i % 50) * 20000, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def sound(name: str) -> bytes:
    with wave.open(str(SOUNDS / f"{name}.wav")) as w:
        return w.readframes(w.getnframes())


def tone8k(hz: float, ms: int) -> bytes:
    t = np.arange(8 * ms) / 8000
    return (np.sin(2 * np.pi * hz * t) * 5000).astype("<i2").tobytes()


def gap(ms: int) -> bytes:
    return bytes(16 * ms)


class RtpSink:
    """The callee's media: a UDP socket that keeps every RTP payload it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.payloads: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                continue
            if len(data) > 12 and data[1] & 0x7F == 0:  # RTP, payload type 0 (PCMU)
                self.payloads.append(data[12:])

    def voiced_seconds(self) -> float:
        """Seconds of received audio whose 20 ms frames are louder than -40 dBFS."""
        pcm = np.frombuffer(ulaw_decode(b"".join(self.payloads)), dtype=np.int16).astype(np.float64)
        frames = pcm[: len(pcm) // 160 * 160].reshape(-1, 160)
        rms = np.sqrt((frames**2).mean(axis=1)) / 32768
        return float((rms > 0.01).sum() * 0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def out_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, int, int]]:
    os.environ.update(VG_TEST_CONTROL_TOKEN=TOKEN, VG_TEST_OUT_PW="unused")
    port, callee_port, control_port = free_port(), free_port(), free_port()
    cfg = yaml.safe_load(gateway_config(port))
    cfg["agents"]["caller"] = {"type": "scripted", "start": "a", "nodes": {"a": [
        {"say": "Hello, this is voicegate calling about your appointment tomorrow."}, {"hangup": "done"}]}}
    cfg["trunks"] = {"carrier": {"registrar": f"sip:127.0.0.1:{callee_port}", "register": False,
                                 "username": "vgout", "password_env": "VG_TEST_OUT_PW", "caller_id": CALLER_ID,
                                 "allowed": [r"\+?4930\d{4,10}"]}}
    cfg["control"] = {"listen": "127.0.0.1", "port": control_port, "token_env": "VG_TEST_CONTROL_TOKEN"}
    gw = start_gateway(yaml.safe_dump(cfg), tmp_path_factory.mktemp("gw-out"), port)
    yield gw, callee_port, control_port
    assert gw.stop() == 0, "\n".join(gw.lines[-20:])


def dial(gw: Gateway, number: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "voicegate"), "dial", number, "--config", str(gw.config), *args],
                          capture_output=True, text=True, timeout=30)


def test_dial_calls_a_sipp_callee_on_the_trunk_and_runs_the_agent(out_gw: tuple[Gateway, int, int],
                                                                   tmp_path: Path) -> None:
    gw, callee_port, _ = out_gw
    (tmp_path / "uas.xml").write_text(uas_scenario((sink := RtpSink()).port))
    messages = tmp_path / "messages.log"
    sipp = subprocess.Popen(["sipp", "-nostdin", "-sf", "uas.xml", "-i", "127.0.0.1", "-p", str(callee_port),
                             "-m", "1", "-trace_msg", "-message_file", str(messages)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        time.sleep(0.5)
        out = dial(gw, "+4930123456", "--agent", "caller")
        assert out.returncode == 0, out.stderr
        call_id = re.search(r"call (\S+)$", out.stdout.strip())
        assert call_id and f"sip:+4930123456@127.0.0.1:{callee_port}" in out.stdout, out.stdout
        end = gw.wait_event("call_end", 30, call=call_id.group(1))
        assert sipp.wait(15) == 0, sipp.stderr.read() if sipp.stderr else ""
    finally:
        if sipp.poll() is None:
            sipp.kill()
            sipp.wait(5)
        sink.close()
    assert end["direction"] == "outbound" and end["reason"] == "done" and end["trunk"] == "carrier"
    assert end["frames_out"] > 100
    assert sink.voiced_seconds() > 1.0  # the agent's sentence reached the callee
    invite = messages.read_text().split("INVITE sip:", 1)[1]
    assert re.search(rf"^From: <?sip:\{CALLER_ID}@127\.0\.0\.1", invite, re.M | re.I), invite[:600]
    answered = gw.wait_event("call_answered", 1, call=call_id.group(1))
    assert answered["direction"] == "outbound"
    recs, _ = read_records(gw.config.parent / "records" / "calls.db")
    rec = next(r for r in recs if r["call"] == call_id.group(1))
    assert rec["direction"] == "outbound" and rec["called"] == "+4930123456" and rec["caller"] == CALLER_ID


def test_a_number_outside_the_allowed_patterns_is_refused(out_gw: tuple[Gateway, int, int]) -> None:
    gw, _, _ = out_gw
    out = dial(gw, "+9001234567", "--agent", "caller")
    assert out.returncode == 1
    assert "refused (403)" in out.stderr and "not allowed on trunk carrier" in out.stderr, out.stderr
    ev = gw.wait_event("dial_refused", 5, number="+9001234567")
    assert ev["status"] == 403 and not [e for e in gw.events("call_outgoing") if e["number"] == "+9001234567"]


def test_the_control_endpoint_wants_the_token(out_gw: tuple[Gateway, int, int]) -> None:
    gw, _, control_port = out_gw
    url = f"http://127.0.0.1:{control_port}/calls"
    body = {"number": "+4930123456", "agent": "caller"}
    for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.post(url, json=body, headers=auth, timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
    r = httpx.post(url, content=b"{not json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = httpx.post(url, json={**body, "agent": "nobody"}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 404 and "unknown agent 'nobody'" in r.json()["error"]
    assert len(gw.events("control_unauthorized")) >= 3


@pytest.mark.parametrize(("who", "reason"), [("machine", "machine_message"), ("person", "done"), ("sit", "sit")])
def test_call_progress_finds_who_answered(out_gw: tuple[Gateway, int, int], tmp_path: Path, who: str,
                                          reason: str) -> None:
    """The callee (sipp) plays a recorded answering-machine greeting and beep, a person's hello, or an intercept's
    SIT tones and message; the gateway leaves its message after the beep, runs the agent, or hangs up."""
    gw, callee_port, _ = out_gw
    audio = {"machine": gap(300) + sound("vm-intro") + gap(300) + sound("beep") + gap(8000),
             "person": gap(400) + sound("hello") + gap(8000),
             "sit": gap(200) + b"".join(tone8k(hz, ms) for hz, ms in zip(SIT_HZ, (276, 276, 380), strict=True))
             + sound("ss-noservice")}[who]
    rtp_pcap(tmp_path / "callee.pcap", audio)
    (tmp_path / "uas.xml").write_text(player_scenario("callee.pcap"))
    media_port = rtp_range(4)[0]
    sipp = subprocess.Popen(["sipp", "-nostdin", "-sf", "uas.xml", "-i", "127.0.0.1", "-p", str(callee_port),
                             "-mi", "127.0.0.1", "-mp", str(media_port), "-m", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        time.sleep(0.5)
        out = dial(gw, "+49301234567", "--agent", "caller", "--amd", "message",
                   "--message", "Please call us back about your appointment.", "--json")
        assert out.returncode == 0, out.stderr
        call_id = json.loads(out.stdout)["call"]
        end = gw.wait_event("call_end", 40, call=call_id)
        assert sipp.wait(15) == 0, sipp.stderr.read() if sipp.stderr else ""
    finally:
        if sipp.poll() is None:
            sipp.kill()
            sipp.wait(5)
    assert end["reason"] == reason, json.dumps({k: end.get(k) for k in ("rtp", "progress", "frames_in")})
    results = [p["result"] for p in end["progress"]]
    if who == "machine":
        assert results == ["machine", "messagecue"] and end["progress"][0]["reason"] == "long_greeting", end
        assert abs(end["progress"][1]["beep_hz"] - 700) < 20
        said = gw.wait_event("call_message", 1, call=call_id)
        cue = next(e for e in gw.events("call_progress") if e["call"] == call_id and e["result"] == "messagecue")
        beep_end = (300 + 5654 + 300 + 425) / 1000  # the recording's times (ms), from the answer
        answered = gw.wait_event("call_answered", 1, call=call_id)
        assert abs(cue["ts"] - answered["ts"] - beep_end) < 0.6, (cue["ts"] - answered["ts"], beep_end)
        assert said["ms"] > 1000 and end["frames_out"] * 20 > said["ms"]
    elif who == "person":
        assert results == ["human"] and gw.wait_event("agent_say", 1, call=call_id)
    else:
        assert results == ["sit"] and not [e for e in gw.events("agent_say") if e["call"] == call_id]
