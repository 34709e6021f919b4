"""Trunks against a real Kamailio registrar: digest registration, refresh, a wrong password, registrars that fail or
never answer, a Kamailio restart, and calls Kamailio routes to the registered contact."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from telephony.simulator.measure import echo_lag
from tests import audio
from tests.integration.kamailio import OUT_PREFIX, REALM, Kamailio
from tests.integration.peers import (
    VENV_BIN,
    Gateway,
    ack,
    baresip,
    call,
    free_port,
    gateway_config,
    invite,
    reply,
    rtp_range,
    sipp,
    start_gateway,
)
from tests.integration.test_outbound import RtpSink, uas_scenario

PASSWORD = "s3cret-trunk"
DID = "+4930123"
AUTH_DID = "+4930777"
PCMU = """v=0
o=user1 53655765 2353687637 IN IP4 [local_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000"""
METADATA = [
    "P-Asserted-Identity: \"Alice\" <sip:+441234567@carrier.example>",
    "Privacy: id",
    "Diversion: <sip:+4930999@carrier.example>;reason=unconditional;counter=1",
    "History-Info: <sip:+4930999@carrier.example>;index=1",
    "X-Customer-Id: 42",
    "X-Lang: de-DE",
    "User-to-User: 56a390f3d2b7310023a2;encoding=hex",
]
BYE = """  <send retrans="500"><![CDATA[
BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To:[$to]
Call-ID: [call_id]
CSeq: 3 BYE
Contact: sip:sipp@[local_ip]:[local_port]
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
"""
TO_TAG = '<action><ereg regexp=".*" search_in="hdr" header="To:" assign_to="to"/></action>'


def scenario(body: str) -> str:
    return f'''<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="trunk test">
{body}</scenario>
'''


def call_with_headers(headers: list[str], expect: int = 200) -> str:
    """INVITE with `headers`; on 200: ACK, 1.5 s of call, BYE; otherwise ACK the error."""
    if expect != 200:
        return scenario(f'{invite(PCMU, headers)}  <recv response="{expect}"/>\n{ack(expect)}')
    return scenario(f'{invite(PCMU, headers)}  <recv response="200" rrs="true">{TO_TAG}</recv>\n{ack(200)}'
                    f'  <pause milliseconds="1500"/>\n{BYE}')


def authenticated_call(expect: int) -> str:
    """INVITE, 401 with a challenge, ACK, INVITE with digest credentials (sipp's -au/-ap), then `expect`."""
    body = "\n".join(line.strip() for line in PCMU.strip().splitlines())
    second = f"""  <recv response="401" auth="true"/>
{ack(401)}  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 2 INVITE
Contact: sip:sipp@[local_ip]:[local_port]
[authentication]
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

{body}
]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
"""
    if expect != 200:
        return scenario(f'{invite(PCMU)}{second}  <recv response="{expect}"/>\n'
                        + ack(expect).replace("CSeq: 1 ACK", "CSeq: 2 ACK"))
    return scenario(f'{invite(PCMU)}{second}  <recv response="200" rrs="true">{TO_TAG}</recv>\n'
                    + ack(200).replace("CSeq: 1 ACK", "CSeq: 2 ACK") + f'  <pause milliseconds="1000"/>\n{BYE}')


REFER_WITH_CONTEXT = scenario(f"""{invite(PCMU, METADATA)}  <recv response="200" rrs="true">{TO_TAG}</recv>
{ack(200)}  <recv request="REFER">
    <action>
      <ereg regexp="X-Case=42" search_in="hdr" header="Refer-To:" check_it="true" assign_to="c1"/>
      <ereg regexp="User-to-User=56a390f3d2b7310023a2%3Bencoding%3Dhex" search_in="hdr" header="Refer-To:"
            check_it="true" assign_to="c2"/>
    </action>
  </recv>
{reply("202 Accepted")}{BYE}  <Reference variables="c1,c2"/>
""")


class SilentRegistrar:
    """A UDP socket that takes REGISTERs and never answers (a registrar that is down or firewalled)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.packets: list[tuple[float, str]] = []
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            m = re.search(r"^CSeq:\s*(\d+) REGISTER", data.decode(errors="replace"), re.M | re.I)
            if m:
                self.packets.append((time.monotonic(), m.group(1)))

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


METRICS_PORT: dict[int, int] = {}
"""The metrics port of the trunk gateway, by its SIP port."""
UAS_PORT = free_port()
"""The sipp callee that Kamailio carries calls out to."""
TOKEN = "trunk-control-token"


@pytest.fixture(scope="module")
def carrier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    k = Kamailio(free_port(), tmp_path_factory.mktemp("kamailio"), PASSWORD, "vgtrunk", uas_port=UAS_PORT)
    k.start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def silent() -> Iterator[SilentRegistrar]:
    s = SilentRegistrar()
    yield s
    s.close()


@pytest.fixture(scope="module")
def trunk_gw(carrier: Kamailio, silent: SilentRegistrar, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Gateway]:
    os.environ.update(VG_TEST_TRUNK_PW=PASSWORD, VG_TEST_BAD_PW="not-the-password", VG_TEST_TRUNK_TOKEN=TOKEN)
    registrar = f"sip:127.0.0.1:{carrier.port}"
    trunks = {
        "main": {"registrar": registrar, "username": "vgtrunk", "password_env": "VG_TEST_TRUNK_PW",
                 "realm": REALM, "expiry_s": 10, "keepalive_s": 1, "routes": [{"match": DID, "agent": "echo"}],
                 "allowed": [rf"{OUT_PREFIX}\d+"]},
        "bad": {"registrar": registrar, "username": "badtrunk", "password_env": "VG_TEST_BAD_PW",
                "retry_min_s": 1, "retry_max_s": 60},
        "dead": {"registrar": f"sip:127.0.0.1:{free_port()}", "transport": "tcp", "username": "x",
                 "password_env": "VG_TEST_BAD_PW", "retry_min_s": 1, "retry_max_s": 60},
        "silent": {"registrar": f"sip:127.0.0.1:{silent.port}", "username": "y",
                   "password_env": "VG_TEST_BAD_PW"},
        "proxied": {"registrar": "sip:127.0.0.3:9", "outbound_proxy": f"sip:127.0.0.1:{carrier.port}",
                    "username": "vgproxy", "password_env": "VG_TEST_TRUNK_PW", "realm": REALM,
                    "inbound_auth": True, "routes": [{"match": AUTH_DID, "agent": "echo"}]},
        "unreachable": {"registrar": f"sip:127.0.0.1:{free_port()}", "register": False, "username": "z",
                        "password_env": "VG_TEST_BAD_PW", "keepalive_s": 1},
        "secure": {"registrar": registrar, "register": False, "username": "vgsecure", "srtp": "mandatory",
                   "password_env": "VG_TEST_BAD_PW", "routes": [{"match": "*", "agent": "echo"}]},
    }
    port = free_port()
    METRICS_PORT[port] = free_port()
    cfg = yaml.safe_load(gateway_config(port, trunks=trunks, metrics={"enabled": True, "port": METRICS_PORT[port]}))
    cfg["agents"]["handoff"] = {
        "type": "scripted", "voice": "en", "start": "a",
        "nodes": {"a": [{"say": "Connecting you, customer {X-Customer-Id}."},
                        {"transfer": "sip:desk@127.0.0.1:9", "timeout_s": 5,
                         "headers": {"X-Case": "{X-Customer-Id}", "User-to-User": "{User-to-User}"}},
                        {"hangup": "transfer_failed"}]},
    }
    cfg["agents"]["caller"] = {"type": "scripted", "start": "a", "nodes": {"a": [
        {"say": "Hello, this is voicegate calling about your appointment tomorrow."}, {"hangup": "done"}]}}
    cfg["control"] = {"listen": "127.0.0.1", "port": free_port(), "token_env": "VG_TEST_TRUNK_TOKEN"}
    cfg["routes"] = [
        {"match": "sales", "match_header": {"X-Lang": "/^de/"}, "agent": "echo"},
        {"match": "sales", "agent": "demo"},
        {"match": "handoff", "agent": "handoff"},
        *cfg["routes"],
    ]
    gw = start_gateway(yaml.safe_dump(cfg), tmp_path_factory.mktemp("gw-trunks"), port)
    yield gw
    assert gw.stop() == 0, "\n".join(gw.lines[-20:])


def states(gw: Gateway, trunk: str) -> list[dict[str, object]]:
    return [e for e in gw.events("trunk_state") if e["trunk"] == trunk]


def test_registers_after_a_digest_challenge_and_reports_it(trunk_gw: Gateway, carrier: Kamailio):
    ev = trunk_gw.wait_event("trunk_state", 10, trunk="main", state="registered")
    assert ev["code"] == 200 and ev["expires_s"] == 10
    log = [ln for ln in carrier.lines if "KAM" in ln and "vgtrunk" in ln]
    assert "challenge vgtrunk auth=<null>" in log[0], log[:3]  # first REGISTER has no credentials: 401
    assert any("registered vgtrunk" in ln for ln in log)
    out = subprocess.run([str(VENV_BIN / "voicegate"), "trunks", "--config", str(trunk_gw.config)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    row = next(ln for ln in out.stdout.splitlines() if ln.startswith("main "))
    assert "registered" in row and "200 OK" in row, out.stdout


def trunk_metrics(gw: Gateway) -> dict[tuple[str, str, str], float]:
    """The scraped trunk gauges, as (metric, trunk, state) -> value (state "" for the per-trunk ones)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT[gw.port]}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, s.labels["trunk"], s.labels.get("state", "")): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name.startswith("voicegate_trunk")}


def test_registration_states_are_on_the_metrics_endpoint(trunk_gw: Gateway):
    trunk_gw.wait_event("trunk_state", 10, trunk="main", state="registered")
    trunk_gw.wait_event("trunk_state", 15, trunk="bad", state="failed", failures=2)
    m = trunk_metrics(trunk_gw)
    assert m[("voicegate_trunk_registration", "main", "registered")] == 1
    assert m[("voicegate_trunk_registration", "main", "failed")] == 0
    assert m[("voicegate_trunk_last_status_code", "main", "")] == 200
    # the wrong password: failed, backing off (a retry is not a state change until its answer), 401 from Kamailio
    assert m[("voicegate_trunk_registration", "bad", "failed")] == 1
    assert m[("voicegate_trunk_registration", "bad", "registered")] == 0
    assert m[("voicegate_trunk_last_status_code", "bad", "")] == 401
    assert m[("voicegate_trunk_failures", "bad", "")] >= 2
    assert ("voicegate_trunk_registration", "secure", "registered") not in m  # register: false


def test_register_goes_through_the_outbound_proxy(trunk_gw: Gateway, carrier: Kamailio):
    # the registrar's own address has nothing listening: only the proxy (Kamailio) can have answered
    assert trunk_gw.wait_event("trunk_state", 10, trunk="proxied", state="registered")["code"] == 200
    assert carrier.log("registered vgproxy")


def test_registration_is_refreshed_before_it_expires(trunk_gw: Gateway, carrier: Kamailio):
    first = trunk_gw.wait_event("trunk_state", 10, trunk="main", state="registered")
    refresh = trunk_gw.wait_event("trunk_state", 15, trunk="main", refresh=True)
    assert 0 < refresh["ts"] - first["ts"] < 10, "refreshed only after the 10 s registration ran out"
    assert len(carrier.log("registered vgtrunk")) >= 2


def test_wrong_password_marks_the_trunk_failed_and_backs_off(trunk_gw: Gateway):
    trunk_gw.wait_event("trunk_state", 15, trunk="bad", state="failed", failures=3)
    failed = [e for e in states(trunk_gw, "bad") if e["state"] == "failed"]
    assert failed[0]["code"] == 401 and failed[0]["reason"] == "Unauthorized"
    assert [e["retry_in_s"] for e in failed[:3]] == [1.0, 2.0, 4.0]
    assert not any(e["state"] == "registered" for e in states(trunk_gw, "bad"))


def test_refused_connection_backs_off_without_a_busy_loop(trunk_gw: Gateway):
    trunk_gw.wait_event("trunk_state", 15, trunk="dead", state="failed", failures=3)
    failed = [e for e in states(trunk_gw, "dead") if e["state"] == "failed"]
    gaps = [b["ts"] - a["ts"] for a, b in zip(failed, failed[1:], strict=False)]  # type: ignore[operator]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps
    assert failed[0]["code"] >= 400, failed[0]


def test_a_registrar_that_never_answers_gets_retransmissions_only(trunk_gw: Gateway, silent: SilentRegistrar):
    added = trunk_gw.wait_event("trunk_added", 10, trunk="silent")
    time.sleep(max(0.0, added["ts"] + 6.0 - time.time()))
    first = silent.packets[0][0]
    early = [p for p in silent.packets if p[0] - first <= 6.0]
    # one REGISTER transaction, retransmitted by pjsip's timers (0, 0.5, 1.5, 3.5 s ...), nothing else
    assert len({c for _, c in early}) == 1 and 3 <= len(early) <= 5, silent.packets
    assert not any(e["state"] == "registered" for e in states(trunk_gw, "silent"))


def test_options_keepalives_reach_the_registrar_and_an_unreachable_one_is_reported(trunk_gw: Gateway,
                                                                                  carrier: Kamailio):
    up = trunk_gw.wait_event("trunk_keepalive", 10, trunk="main", state="up")
    assert up["code"] == 200 and up["rtt_ms"] < 1000, up
    seen = len(carrier.wait_log("options from vgtrunk", 10, count=3))
    elapsed = time.time() - up["ts"] + 1  # the first ping went about when its answer came
    assert seen <= elapsed + 2, f"{seen} OPTIONS in {elapsed:.1f} s at keepalive_s 1"
    down = trunk_gw.wait_event("trunk_keepalive", 10, trunk="unreachable", state="down")
    assert down["code"] == 408 and down["answered"] == 0, down
    out = subprocess.run([str(VENV_BIN / "voicegate"), "trunks", "--config", str(trunk_gw.config)],
                         capture_output=True, text=True, timeout=30)
    rows = {ln.split()[0]: ln for ln in out.stdout.splitlines()}
    assert " ms" in rows["main"].split("up ")[-1] and rows["unreachable"].endswith("down 408"), out.stdout
    m = trunk_metrics(trunk_gw)
    assert m[("voicegate_trunk_keepalive", "main", "up")] == 1 and m[("voicegate_trunk_keepalive", "main", "down")] == 0
    assert 0 < m[("voicegate_trunk_keepalive_rtt_seconds", "main", "")] < 1
    assert m[("voicegate_trunk_keepalive", "unreachable", "down")] == 1
    assert ("voicegate_trunk_keepalive", "bad", "unknown") not in m  # no keepalive_s: no pings


def test_kamailio_routes_a_did_call_to_the_trunks_agent(trunk_gw: Gateway, carrier: Kamailio):
    trunk_gw.wait_event("trunk_state", 10, trunk="main", state="registered")
    res = call(f"sip:{DID}@127.0.0.1:{carrier.port}", "--duration", "2")
    assert res["status"] == 200 and res["answered"], res
    inc = trunk_gw.wait_event("call_incoming", 5, called=DID)
    assert inc["trunk"] == "main" and inc["source"].startswith("127.0.0.1:")
    end = trunk_gw.wait_event("call_end", 10, call=inc["call"])
    assert end["agent"] == "echo"
    assert carrier.log(f"invite {DID} to sip:vgtrunk@127.0.0.1:{trunk_gw.port}")


def test_re_registers_after_kamailio_restarts(trunk_gw: Gateway, carrier: Kamailio, tmp_path: Path):
    trunk_gw.wait_event("trunk_state", 10, trunk="main", state="registered")
    carrier.stop()
    restarted = time.time()
    fresh = Kamailio(carrier.port, tmp_path, PASSWORD, "vgtrunk")
    fresh.start()
    try:
        fresh.wait_log("registered vgtrunk", 15)  # the new process knows no contact until voicegate registers
        deadline = time.monotonic() + 5
        while not any(e["state"] == "registered" and e["ts"] > restarted for e in states(trunk_gw, "main")):
            assert time.monotonic() < deadline, states(trunk_gw, "main")[-3:]
            time.sleep(0.05)
        res = call(f"sip:{DID}@127.0.0.1:{carrier.port}", "--duration", "1")
        assert res["status"] == 200, res
        assert fresh.log(f"invite {DID}")
    finally:
        fresh.stop()
        carrier.start()  # the module's carrier again, for the tests after this one


def test_a_trunk_number_from_a_foreign_address_gets_403(trunk_gw: Gateway, workdir: Path):
    (workdir / "s.xml").write_text(call_with_headers([], expect=403))
    r = sipp(["-sf", "s.xml", "-s", DID, "-i", "127.0.0.2", f"127.0.0.1:{trunk_gw.port}"], workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ev = trunk_gw.wait_event("call_refused", 5, code=403, called=DID)
    assert ev["source"].startswith("127.0.0.2:") and ev["reason"] == "127.0.0.2 is not an address of trunk main"


def test_sip_metadata_reaches_the_call_record_and_drives_routing(trunk_gw: Gateway, workdir: Path):
    (workdir / "s.xml").write_text(call_with_headers(METADATA))
    r = sipp(["-sf", "s.xml", "-s", DID, "-mp", str(rtp_range(10)[0]), f"127.0.0.1:{trunk_gw.port}"], workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    inc = next(e for e in trunk_gw.events("call_incoming") if e["called"] == DID and e["sip_headers"])
    assert inc["trunk"] == "main" and inc["source"].startswith("127.0.0.1:")  # sipp's port: 5060 unless taken
    assert inc["original_called"] == "+4930999"
    end = trunk_gw.wait_event("call_end", 10, call=inc["call"])
    want = {"P-Asserted-Identity": '"Alice" <sip:+441234567@carrier.example>', "Privacy": "id",
            "Diversion": "<sip:+4930999@carrier.example>;reason=unconditional;counter=1",
            "History-Info": "<sip:+4930999@carrier.example>;index=1", "X-Customer-Id": "42", "X-Lang": "de-DE",
            "User-to-User": "56a390f3d2b7310023a2;encoding=hex"}
    assert end["sip_headers"] == want and end["trunk"] == "main" and end["agent"] == "echo"
    # `sales` with X-Lang: de... goes to echo; without the header, to demo
    r = sipp(["-sf", "s.xml", "-s", "sales", "-mp", str(rtp_range(10)[0]), f"127.0.0.1:{trunk_gw.port}"], workdir)
    assert r.returncode == 0, r.stdout[-2000:]
    (workdir / "plain.xml").write_text(call_with_headers([]))
    r = sipp(["-sf", "plain.xml", "-s", "sales", "-mp", str(rtp_range(10)[0]), f"127.0.0.1:{trunk_gw.port}"],
             workdir)
    assert r.returncode == 0, r.stdout[-2000:]
    sales = [e for e in trunk_gw.events("call_incoming") if e["called"] == "sales"]
    agents = [trunk_gw.wait_event("call_end", 10, call=e["call"])["agent"] for e in sales]
    assert agents == ["echo", "demo"]


def test_a_transfer_carries_the_calls_context_to_the_target(trunk_gw: Gateway, workdir: Path):
    (workdir / "refer.xml").write_text(REFER_WITH_CONTEXT)
    r = sipp(["-sf", "refer.xml", "-s", "handoff", "-mp", str(rtp_range(10)[0]), f"127.0.0.1:{trunk_gw.port}",
              "-trace_msg", "-message_file", "m.log"], workdir, timeout=40)
    assert r.returncode == 0, r.stdout[-2000:] + (workdir / "m.log").read_text()[-3000:]
    refer_to = re.findall(r"^Refer-To:.*$", (workdir / "m.log").read_text(), re.M)
    assert len(refer_to) == 1 and refer_to[0].startswith("Refer-To: <sip:desk@127.0.0.1:9?"), refer_to
    fields = refer_to[0].split("?", 1)[1].rstrip(">").split("&")
    assert sorted(fields) == ["User-to-User=56a390f3d2b7310023a2%3Bencoding%3Dhex", "X-Case=42"]


def test_an_srtp_trunk_takes_sdes_calls_and_refuses_plain_rtp(trunk_gw: Gateway, workdir: Path, clips):
    speech = np.concatenate([np.zeros(8000), clips.caller, np.zeros(16000)])
    target = f"sip:vgsecure@127.0.0.1:{trunk_gw.port}"
    sent, heard = baresip(target, audio.write_wav(workdir / "in.wav", speech), workdir, mediaenc="srtp-mand")
    lag_ms, peak = echo_lag(audio.read_wav(sent), audio.read_wav(heard))
    assert peak > 0.4 and lag_ms < 200, (peak, lag_ms)  # both directions decrypt: baresip hears itself
    inc = [e for e in trunk_gw.events("call_incoming") if e["called"] == "vgsecure"]
    assert inc and inc[0]["trunk"] == "secure"
    media = [e for e in trunk_gw.events("call_media") if e["call"] == inc[0]["call"]]
    assert media and all(m["srtp"] for m in media), media
    assert call(target, "--duration", "1")["status"] == 488  # the pjsua2 caller offers plain RTP only


@pytest.mark.parametrize(("password", "expect"), [(PASSWORD, 200), ("guessed", 403)])
def test_a_trunk_with_inbound_auth_admits_a_foreign_address_by_its_credentials(
        trunk_gw: Gateway, workdir: Path, password: str, expect: int):
    (workdir / "auth.xml").write_text(authenticated_call(expect))
    r = sipp(["-sf", "auth.xml", "-s", AUTH_DID, "-i", "127.0.0.2", "-au", "vgproxy", "-ap", password,
              "-auth_uri", f"{AUTH_DID}@127.0.0.1:{trunk_gw.port}",  # the Request-URI (sipp's default differs)
              "-mp", str(rtp_range(10)[0]), f"127.0.0.1:{trunk_gw.port}", "-trace_msg", "-message_file", "m.log"],
             workdir)
    assert r.returncode == 0, (workdir / "m.log").read_text()[-3000:]
    refusals = [e for e in trunk_gw.events("call_refused") if e["called"] == AUTH_DID]
    assert refusals[-1 if expect == 200 else -2]["code"] == 401
    if expect == 200:
        inc = trunk_gw.wait_event("call_incoming", 5, called=AUTH_DID, authenticated=True)
        assert inc["trunk"] == "proxied" and inc["source"].startswith("127.0.0.2:")
        assert trunk_gw.wait_event("call_end", 10, call=inc["call"])["agent"] == "echo"
    else:
        assert refusals[-1]["code"] == 403 and refusals[-1]["reason"].endswith("wrong password")


def test_dial_goes_out_through_kamailio_after_its_digest_challenge(trunk_gw: Gateway, carrier: Kamailio,
                                                                  tmp_path: Path):
    number = f"{OUT_PREFIX}123456"
    (tmp_path / "uas.xml").write_text(uas_scenario((sink := RtpSink()).port))
    callee = subprocess.Popen(["sipp", "-nostdin", "-sf", "uas.xml", "-i", "127.0.0.1", "-p", str(UAS_PORT), "-m",
                               "1", "-trace_msg", "-message_file", str(tmp_path / "m.log")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        out = subprocess.run([str(VENV_BIN / "voicegate"), "dial", number, "--agent", "caller", "--trunk", "main",
                              "--config", str(trunk_gw.config)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        call_id = out.stdout.strip().rsplit(" ", 1)[1]
        end = trunk_gw.wait_event("call_end", 30, call=call_id)
        assert callee.wait(15) == 0, callee.stderr.read() if callee.stderr else ""
    finally:
        if callee.poll() is None:
            callee.kill()
            callee.wait(5)
        sink.close()
    # Kamailio challenged the first INVITE (407) and relayed the one with vgtrunk's credentials to the callee
    [challenge] = carrier.log(f"challenge-invite {number} from vgtrunk auth=<null>")
    [relayed] = carrier.log(f"outbound {number} from vgtrunk auth=vgtrunk to sip:{number}@127.0.0.1:{UAS_PORT}")
    assert carrier.lines.index(challenge) < carrier.lines.index(relayed)
    invite = (tmp_path / "m.log").read_text().split("INVITE sip:", 1)[1]
    assert "Proxy-Authorization" not in invite.split("\n\n", 1)[0]  # Kamailio consumed the credentials
    assert end["direction"] == "outbound" and end["trunk"] == "main" and end["reason"] == "done", end
    assert sink.voiced_seconds() > 1.0  # the agent's sentence reached the callee behind Kamailio
