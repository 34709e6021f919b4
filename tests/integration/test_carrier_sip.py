"""What carriers and SBCs send besides a plain call.

Reliable provisional responses (RFC 3262): a caller that requires 100rel gets a 180 with RSeq, PRACKs it and the
call completes; a caller that only supports it gets the usual unreliable 180 (pjsua's `prackUse` stays
`PJSUA_100REL_NOT_USED`: pjsip still honours a `Require: 100rel`). An OPTIONS ping is answered 200.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.peers import Gateway, bye, rtp_range, sipp

SDP = """v=0
o=sipp 1 1 IN IP4 [local_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000"""


def scenario(ext_header: str, reliable: bool) -> str:
    """INVITE with `ext_header`; PRACK the 180 if `reliable` (it must then carry RSeq), else expect none. The 2xx to
    the INVITE may come before the PRACK's 200 (RFC 3262 3: the 180 carries no SDP), so either order passes."""
    body = "\n".join(line.strip() for line in SDP.splitlines())
    if reliable:
        ringing = """  <recv response="180" rrs="true" response_txn="invite">
    <action><ereg regexp="[0-9]+" search_in="hdr" header="RSeq:" check_it="true" assign_to="rseq"/></action>
  </recv>
  <send start_txn="prack"><![CDATA[
PRACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[last_From:]
[last_To:]
Call-ID: [call_id]
CSeq: 2 PRACK
RAck: [$rseq] 1 INVITE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200" response_txn="prack" optional="true" next="prack_answered"/>
  <recv response="200" response_txn="invite" rrs="true"/>
  <recv response="200" response_txn="prack"/>
  <nop hide="true" next="answered"/>
  <label id="prack_answered"/>
"""
    else:
        ringing = """  <recv response="180" response_txn="invite"/>
"""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="100rel">
  <send retrans="500" start_txn="invite"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: sip:sipp@[local_ip]:[local_port]
{ext_header}
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

{body}
]]></send>
  <recv response="100" optional="true" response_txn="invite"/>
{ringing}  <recv response="200" response_txn="invite" rrs="true"/>
  <label id="answered"/>
  <send ack_txn="invite"><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[last_From:]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <pause milliseconds="1000"/>
{bye(3)}</scenario>
"""


def run(gateway: Gateway, workdir: Path, ext_header: str, reliable: bool) -> str:
    (workdir / "prack.xml").write_text(scenario(ext_header, reliable))
    r = sipp(["-sf", "prack.xml", "-s", "echo", f"127.0.0.1:{gateway.port}", "-mp", str(rtp_range(4)[0]),
              "-trace_msg", "-message_file", "msgs.log"], workdir, timeout=30)
    log = (workdir / "msgs.log").read_text() if (workdir / "msgs.log").exists() else ""
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-1000:]}\n{log[-3000:]}"
    return log


def ringing(log: str) -> str:
    """The 180 the gateway sent, as sipp logged it."""
    start = log.index("SIP/2.0 180")
    return log[start:log.index("\n\n", start)]


def test_a_caller_requiring_100rel_gets_a_reliable_180_and_the_call_completes(gateway: Gateway, workdir: Path):
    log = run(gateway, workdir, "Supported: 100rel\nRequire: 100rel", reliable=True)
    assert "Require: 100rel" in ringing(log), ringing(log)
    end = gateway.wait_event("call_end", 10, agent="echo", reason="remote_200")
    assert end["duration_s"] > 0.5


def test_a_caller_supporting_100rel_gets_an_unreliable_180(gateway: Gateway, workdir: Path):
    log = run(gateway, workdir, "Supported: 100rel, timer", reliable=False)
    assert "RSeq" not in ringing(log), ringing(log)


OPTIONS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options ping">
  <send retrans="500"><![CDATA[
OPTIONS sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:carrier@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 OPTIONS
Max-Forwards: 70
Accept: application/sdp
Content-Length: 0

]]></send>
  <recv response="200">
    <action><ereg regexp="INVITE" search_in="hdr" header="Allow:" check_it="true" assign_to="allow"/></action>
  </recv>
  <Reference variables="allow"/>
</scenario>
"""


def test_an_options_ping_from_a_carrier_is_answered_200(gateway: Gateway, workdir: Path):
    (workdir / "options.xml").write_text(OPTIONS)
    r = sipp(["-sf", "options.xml", f"127.0.0.1:{gateway.port}"], workdir, timeout=20)
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-1000:]}"
