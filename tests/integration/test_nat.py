"""A caller behind a masquerading router (tests/integration/netns.py) calls the echo agent.

The router maps the caller's ports too, so SIP responses reach it only through its Via's `rport` (RFC 3581).
The caller's SDP names its private address and port, which the gateway cannot reach: audio flows back only because
pjmedia sends RTP to where the caller's RTP really comes from (symmetric RTP). pjmedia 2.15 switches to a new
source address on its first packet when nothing came from the SDP's address before and the SDP has no `a=ssrc`
(stream_common.c, `on_rx_rtp`); after media from the SDP's address it waits for PJMEDIA_RTP_NAT_PROBATION_CNT
(10) packets from the new one.
"""

from __future__ import annotations

import array
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from media.g711 import alaw_decode
from tests.integration.capture import Capture, Packet
from tests.integration.netns import CALLER_IP, ROUTER_WAN_IP, SERVER_IP, NatLab, nat_lab, need_lab
from tests.integration.peers import ROOT, Gateway, ack, bye, gateway_config, invite, reply, start_gateway
from tests.integration.test_tls import issue, make_ca


@pytest.fixture(autouse=True)
def _lab_here() -> None:
    need_lab()

SIP_PORT = 5060
TLS_PORT = 5061
MEDIA_PORT = 6000
SDP = """v=0
o=caller 1 1 IN IP4 [local_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 8
a=rtpmap:8 PCMA/8000
"""
SCENARIO = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="echo call from behind NAT">
{invite(SDP).replace(";branch=", ";rport;branch=", 1)}  <recv response="200" rtd="true"/>
{ack(200)}  <nop><action><exec play_pcap_audio="pcap/g711a.pcap"/></action></nop>
  <pause milliseconds="3500"/>
{bye(uri="sip:[service]@[remote_ip]:[remote_port]", rport=True)}</scenario>
"""

HANGUP = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="the gateway hangs up a caller behind NAT">
{invite(SDP).replace(";branch=", ";rport;branch=", 1)}  <recv response="200"/>
{ack(200)}  <recv request="BYE" timeout="10000"/>
{reply("200 OK")}</scenario>
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[NatLab]:
    with nat_lab() as lab:
        yield lab


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA and the gateway's certificate for its WAN address: (ca, cert, key)."""
    d = tmp_path_factory.mktemp("natpki")
    ca, _, _ = make_ca(d, "nat")
    return (ca, *issue(d, "nat", "natgw", SERVER_IP, f"IP:{SERVER_IP}"))


@pytest.fixture(scope="module")
def server(lab: NatLab, ca: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """voicegate in the server namespace, on its WAN address (UDP, TCP and TLS), with two small agents alone (it
    starts faster)."""
    tmp = tmp_path_factory.mktemp("natgw")
    agents = {"echo": {"type": "echo"},
              "bye": {"type": "scripted", "start": "a", "nodes": {"a": [{"pause_s": 1}, {"hangup": "done"}]}}}
    sip = {"listen": SERVER_IP, "port": SIP_PORT, "transports": ["udp", "tcp", "tls"],
           "tls": {"port": TLS_PORT, "cert_file": str(ca[1]), "key_file": str(ca[2])}}
    config = gateway_config(SIP_PORT, sip=sip, agents=agents,
                            routes=[{"match": "echo", "agent": "echo"}, {"match": "bye", "agent": "bye"}])
    gw = start_gateway(config, tmp, SIP_PORT, prefix=lab.cmd(lab.server, []))
    yield gw
    assert gw.stop() == 0


def loud(p: Packet) -> bool:
    """A packet of speech, not silence (A-law, 8 kHz)."""
    return max(map(abs, array.array("h", alaw_decode(p.payload))), default=0) > 1000


def caller(lab: NatLab, scenario: str, service: str, workdir: Path, transport: str = "u1") -> None:
    """sipp in the caller's namespace runs `scenario` against `service` on the gateway (`transport`: sipp's -t,
    u1 for UDP, t1 for TCP)."""
    if not (workdir / "pcap").exists():
        (workdir / "pcap").symlink_to("/usr/share/sip-tester")
    (workdir / "scenario.xml").write_text(scenario)
    r = subprocess.run(lab.cmd(lab.caller, [
        "sipp", "-sf", "scenario.xml", "-s", service, f"{SERVER_IP}:{SIP_PORT}", "-i", CALLER_IP, "-p", str(SIP_PORT),
        "-mi", CALLER_IP, "-mp", str(MEDIA_PORT), "-m", "1", "-l", "1", "-nostdin", "-timeout", "30s",
        "-t", transport]),
        capture_output=True, text=True, timeout=40, cwd=workdir)
    assert r.returncode == 0, f"sipp failed:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}"


def test_caller_behind_nat_hears_itself_from_the_first_packets(lab: NatLab, server: Gateway, tmp_path: Path) -> None:
    cap = Capture(tmp_path / "caller.pcap", "eth0", SIP_PORT, prefix=lab.cmd(lab.caller, []))
    try:
        caller(lab, SCENARIO, "echo", tmp_path)
    finally:
        packets = cap.stop()

    incoming = server.wait_event("call_incoming", 5, called="echo")
    host, port = incoming["source"].rsplit(":", 1)
    assert host == ROUTER_WAN_IP and 40000 <= int(port) <= 40999, f"the call did not come through the NAT: {incoming}"
    sent = [p for p in packets if p.src == (CALLER_IP, MEDIA_PORT)]
    heard = [p for p in packets if p.dst == (CALLER_IP, MEDIA_PORT)]
    assert sent, "the caller sent no RTP"
    assert heard, "no RTP reached the caller behind NAT: the gateway sent it to the SDP's private address"
    assert {p.src[0] for p in heard} == {SERVER_IP}
    latch_ms = (heard[0].t - sent[0].t) * 1000
    before = sum(p.t < heard[0].t for p in sent)
    spoken = [p for p in sent if loud(p)]
    echoed = [p for p in heard if loud(p)]
    assert spoken and echoed, f"no speech echoed: {len(spoken)} loud packets sent, {len(echoed)} heard"
    echo_ms = (echoed[0].t - spoken[0].t) * 1000
    print(f"\nNAT: first RTP back {latch_ms:.0f} ms after the caller's first, first speech echoed {echo_ms:.0f} ms "
          f"after it was sent; the caller had sent {before} packet(s) by then; {len(echoed)} loud packets echoed of "
          f"{len(spoken)}")
    assert latch_ms < 400, f"the gateway's RTP reached the caller {latch_ms:.0f} ms after the caller's first packet"
    assert echo_ms < 600, f"the caller's speech came back after {echo_ms:.0f} ms"
    # the speech keeps coming back (the echo of the last packets may come after the BYE, when the capture ends)
    assert len(echoed) >= 0.5 * len(spoken) - 3, f"{len(echoed)} loud packets echoed of {len(spoken)} sent"


def test_the_gateways_bye_reaches_a_caller_behind_nat(lab: NatLab, server: Gateway, tmp_path: Path) -> None:
    caller(lab, HANGUP, "bye", tmp_path)  # sipp fails unless the BYE arrives (its Contact is the private address)
    incoming = server.wait_event("call_incoming", 5, called="bye")
    nat = server.wait_event("call_nat", 5, call=incoming["call"])
    assert nat["applied"] and nat["route"] == f"<sip:{incoming['source']};lr>", nat
    assert server.wait_event("call_end", 5, call=incoming["call"])["reason"] == "done"


def test_the_gateways_bye_reaches_a_tcp_caller_behind_nat_over_its_connection(lab: NatLab, server: Gateway,
                                                                               tmp_path: Path) -> None:
    # the caller's Contact (its private address, no transport parameter) is unreachable from the gateway: the BYE
    # must come back over the TCP connection the INVITE came on, through the NAT's mapping
    caller(lab, HANGUP, "bye", tmp_path, transport="t1")
    incoming = [e for e in server.events("call_incoming") if e["called"] == "bye"][-1]
    nat = server.wait_event("call_nat", 5, call=incoming["call"])
    assert nat["applied"] and nat["route"] == f"<sip:{incoming['source']};transport=tcp;lr>", nat
    assert server.wait_event("call_end", 5, call=incoming["call"])["reason"] == "done"


def test_the_gateways_bye_reaches_a_tls_caller_behind_nat_over_its_connection(lab: NatLab, server: Gateway,
                                                                               ca: tuple[Path, Path, Path]) -> None:
    """sipp here has no TLS: the pjsua2 test caller, bound to every address of the caller namespace, so its Contact
    is its private address; the agent's BYE must come back over the caller's TLS connection through the NAT."""
    r = subprocess.run(lab.cmd(lab.caller, [
        sys.executable, "-m", "telephony.simulator.caller", f"sip:bye@{SERVER_IP}:{TLS_PORT};transport=tls",
        "--tls-ca", str(ca[0]), "--bind", "", "--rtp-port", str(MEDIA_PORT), "--duration", "8"]),
        capture_output=True, text=True, timeout=40, cwd=ROOT)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert r.returncode == 0 and lines, f"caller failed:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}"
    res = json.loads(lines[-1])
    incoming = [e for e in server.events("call_incoming") if e["called"] == "bye"][-1]
    nat = server.wait_event("call_nat", 5, call=incoming["call"])
    assert nat["applied"] and nat["route"] == f"<sip:{incoming['source']};transport=tls;lr>", nat
    assert incoming["source"].startswith(f"{ROUTER_WAN_IP}:"), incoming
    assert res["answered"] and res["remote_hangup"], res  # the BYE reached the caller
    assert server.wait_event("call_end", 5, call=incoming["call"])["reason"] == "done"
