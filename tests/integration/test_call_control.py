"""Call control with real peers: hold and resume from a sipp caller (re-INVITEs with a=sendonly or inactive, then
sendrecv); an early-media announcement (183 with SDP) before the answer; a blind transfer the caller carries out
(REFER, 202, NOTIFY 200); a caller's REFER and an INVITE that would replace a call refused; the agent's keys reaching
the caller as RFC 4733 events or SIP INFO, as the route's `dtmf_mode` says."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from media.g711 import ulaw_decode
from tests import audio
from tests.integration.capture import Capture, Packet
from tests.integration.peers import (
    AGENT_KEYS,
    EARLY_ANNOUNCEMENT,
    LONG_PROMPT,
    Gateway,
    ack,
    bye,
    invite,
    reply,
    rtp_range,
    sipp,
)
from tests.integration.test_outbound import rtp_pcap


def sdp(version: int, direction: str) -> str:
    return f"""v=0
o=sipp 1 {version} IN IP4 [local_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
a={direction}"""


def reinvite(cseq: int, body: str, answer: str) -> str:
    """sipp scenario lines: an in-dialog INVITE carrying `body`, its 200 (whose SDP must have `a=ANSWER`), ACK."""
    return f"""  <send retrans="500"><![CDATA[
INVITE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[last_From:]
[last_To:]
Call-ID: [call_id]
CSeq: {cseq} INVITE
Contact: sip:sipp@[local_ip]:[local_port]
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

{body}
]]></send>
  <recv response="100" optional="true"/>
  <recv response="200"><action>
    <ereg regexp="a={answer}" search_in="body" check_it="true" assign_to="dir"/>
  </action></recv>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[last_From:]
[last_To:]
Call-ID: [call_id]
CSeq: {cseq} ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
"""


ANSWER = {"sendonly": "recvonly", "inactive": "inactive"}


def hold_scenario(pcap: str, direction: str) -> str:
    """Call, 2 s of the agent, hold (`direction`: sendonly or inactive) for 3 s, resume (sendrecv), 3 s more, hang
    up. On a sendonly hold the caller's side plays `pcap` (speech: hold music the agent must not take for a
    barge-in)."""
    play = f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n' if direction == "sendonly" else ""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="hold and resume">
{invite(sdp(1, "sendrecv"))}  <recv response="200" rrs="true"/>
{ack(200)}  <pause milliseconds="2000"/>
{reinvite(2, sdp(2, direction), ANSWER[direction])}{play}  <pause milliseconds="3000"/>
{reinvite(3, sdp(3, "sendrecv"), "sendrecv")}  <pause milliseconds="3000"/>
{bye(4)}</scenario>
"""


def sipp_call(gw: Gateway, scenario: str, service: str, media_port: int, cwd: Path) -> str:
    """Run `scenario` (a file in `cwd`) against `service` from sipp; the Call-ID of the call it placed."""
    before = len(gw.events("call_incoming"))
    r = sipp(["-sf", scenario, "-s", service, f"127.0.0.1:{gw.port}", "-mp", str(media_port)], cwd, timeout=40)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    [incoming] = gw.events("call_incoming")[before:]
    return str(incoming["call"])


def captured_sipp_call(gw: Gateway, scenario: str, service: str, cwd: Path) -> tuple[dict[str, Any], list[Packet], int]:
    """`sipp_call` with the loopback captured: the call's `call_end` (the caller hung up), the packets, and the
    caller's media port."""
    media_port = rtp_range(10)[0]
    cap = Capture(cwd / "caller.pcap", "lo", gw.port)
    try:
        call_id = sipp_call(gw, scenario, service, media_port, cwd)
    finally:
        packets = cap.stop()
    end = gw.wait_event("call_end", 10, call=call_id)
    assert end["reason"] == "remote_200", end
    return end, packets, media_port


def loud(p: Packet) -> bool:
    """A packet of speech, not silence (µ-law)."""
    return float(np.abs(audio.to_array(ulaw_decode(p.payload))).max(initial=0.0)) > 1000


@pytest.mark.parametrize("direction", ["sendonly", "inactive"])
def test_hold_from_sipp_stops_the_agent_and_resume_carries_on_where_it_stopped(gateway: Gateway, tmp_path: Path,
                                                                               clips, direction: str):
    speech = audio.to_pcm(np.tile(clips.caller, 2)[::2][: 8000 * 5 // 2])  # 2.5 s at 8 kHz: within the hold
    rtp_pcap(tmp_path / "music.pcap", speech)
    (tmp_path / "hold.xml").write_text(hold_scenario("music.pcap", direction))
    end, packets, media_port = captured_sipp_call(gateway, "hold.xml", "long", tmp_path)
    media = [e for e in gateway.events("call_media") if e["call"] == end["call"]]
    assert [m["hold"] for m in media] == [False, True, False], media
    held, resumed = media[1]["ts"], media[2]["ts"]
    heard = [p for p in packets if p.dst[1] == media_port and p.src[1] != media_port]
    during = [p for p in heard if held + 0.3 < p.t < resumed]
    after = [p for p in heard if loud(p) and p.t > resumed]
    print(f"\nhold: {len(heard)} RTP packets to the caller, {len(during)} of them in the {resumed - held:.1f} s of "
          f"hold; {len(after)} loud after the resume; the agent played {end['speech_frames_out']} frames")
    assert not during, f"{len(during)} RTP packets reached the caller while it held the call"
    assert len(after) > 50, "the agent's message did not carry on after the resume"
    # nothing the caller played on hold reached the agent: no barge-in, no pause
    assert end["barge_ins"] == 0 and not [e for e in gateway.events("barge_in_paused") if e["call"] == end["call"]]
    # the agent's audio waited during the hold: every frame it played went out (150 frames of hold, had it gone on)
    first = next(p.t for p in heard if loud(p))
    sent = len([p for p in heard if p.t >= first])
    assert abs(end["speech_frames_out"] - sent) < 40, (end["speech_frames_out"], sent)



EARLY = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="early media, then the answer">
{invite(sdp(1, "sendrecv"))}  <recv response="183"><action>
    <ereg regexp="m=audio [0-9]+ RTP/AVP 0" search_in="body" check_it="true" assign_to="m"/>
  </action></recv>
  <recv response="200" rrs="true"/>
{ack(200)}  <pause milliseconds="2500"/>
{bye()}  <Reference variables="m"/>
</scenario>
"""


def test_early_media_announcement_is_heard_before_the_answer_then_the_agent(gateway: Gateway, tmp_path: Path):
    (tmp_path / "early.xml").write_text(EARLY)
    end, packets, media_port = captured_sipp_call(gateway, "early.xml", "early", tmp_path)
    answered = gateway.wait_event("call_answered", 1, call=end["call"])
    said = [e for e in gateway.events("agent_say") if e["call"] == end["call"]]
    assert [e["text"][:30] for e in said] == [EARLY_ANNOUNCEMENT[:30], LONG_PROMPT[:30]], said
    heard = [p for p in packets if p.dst[1] == media_port and p.src[1] != media_port and loud(p)]
    before = [p for p in heard if p.t < answered["ts"]]
    after = [p for p in heard if p.t > said[1]["ts"]]
    print(f"\nearly media: {len(before)} loud packets before the answer ({answered['answer_ms']:.0f} ms after the "
          f"INVITE), {len(after)} of the agent after it")
    assert len(before) > 25, "the announcement was not heard before the 200 OK"
    assert len(after) > 25, "the agent was not heard after the answer"
    assert said[1]["ts"] >= answered["ts"] - 0.1, "the agent started before the call was answered"


TRANSFEREE = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="a caller that carries out the agent's REFER">
{invite(sdp(1, "sendrecv"))}  <recv response="200" rrs="true"><action>
    <ereg regexp=";tag=([^;> \r\n]+)" search_in="hdr" header="To:" check_it="true" assign_to="junk,gwtag"/>
  </action></recv>
{ack(200)}  <recv request="REFER" timeout="15000"><action>
    <ereg regexp="sip:operator@example[.]com" search_in="hdr" header="Refer-To:" check_it="true" assign_to="target"/>
  </action></recv>
{reply("202 Accepted")}  <send retrans="500"><![CDATA[
NOTIFY [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>;tag=[$gwtag]
Call-ID: [call_id]
CSeq: 2 NOTIFY
Contact: sip:sipp@[local_ip]:[local_port]
Event: refer
Subscription-State: terminated;reason=noresource
Max-Forwards: 70
Content-Type: message/sipfrag;version=2.0
Content-Length: [len]

SIP/2.0 200 OK
]]></send>
  <recv response="200"/>
  <recv request="BYE" timeout="10000"/>
{reply("200 OK")}  <Reference variables="junk,target"/>
</scenario>
"""


def test_a_blind_transfer_the_caller_carries_out_ends_the_call_with_its_target(gateway: Gateway, tmp_path: Path):
    (tmp_path / "transferee.xml").write_text(TRANSFEREE)
    call_id = sipp_call(gateway, "transferee.xml", "xfer", rtp_range(10)[0], tmp_path)
    end = gateway.wait_event("call_end", 10, call=call_id)
    assert end["reason"] == "transfer:sip:operator@example.com", end  # a failed one says transfer_failed
    assert gateway.wait_event("transfer_result", 1, call=call_id)["code"] == 200


def refer_scenario(target: str) -> str:
    """Call, REFER the gateway to `target` (expect 403), then hang up: the call outlives the refusal."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="a caller's REFER">
{invite(sdp(1, "sendrecv"))}  <recv response="200" rrs="true"/>
{ack(200)}  <send retrans="500"><![CDATA[
REFER [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[last_From:]
[last_To:]
Call-ID: [call_id]
CSeq: 2 REFER
Contact: sip:sipp@[local_ip]:[local_port]
Refer-To: <{target}>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="403"/>
  <pause milliseconds="1000"/>
{bye(3)}</scenario>
"""


def test_a_callers_refer_is_refused_and_nothing_is_dialled(gateway: Gateway, tmp_path: Path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target:
        target.bind(("127.0.0.1", 0))
        target.setblocking(False)
        uri = f"sip:premium@127.0.0.1:{target.getsockname()[1]}"
        (tmp_path / "refer.xml").write_text(refer_scenario(uri))
        call_id = sipp_call(gateway, "refer.xml", "echo", rtp_range(10)[0], tmp_path)
        with pytest.raises(BlockingIOError):
            target.recv(4096)  # pjsua's default would have sent an INVITE here within the second before the BYE
    end = gateway.wait_event("call_end", 10, call=call_id)
    assert end["reason"] == "remote_200", end
    refused = gateway.wait_event("refer_refused", 1, call=end["call"])
    assert refused["target"] == f"<{uri}>" and refused["code"] == 403, refused


class RawUac:
    """A UDP SIP peer for two dialogs at once (an INVITE with Replaces names another dialog's Call-ID and tags,
    which a sipp scenario, bound to one Call-ID, cannot send)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]

    def send(self, method: str, call_id: str, tag: str, cseq: int, branch: str, remote_tag: str = "",
             extra: str = "") -> None:
        body = ("v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                f"m=audio {rtp_range(10)[0]} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n") if method == "INVITE" else ""
        ruri = f"sip:echo@127.0.0.1:{self.gw.port}"
        msg = (f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{branch};rport\r\n"
               f"From: <sip:raw@127.0.0.1:{self.port}>;tag={tag}\r\n"
               f"To: <{ruri}>{';tag=' + remote_tag if remote_tag else ''}\r\n"
               f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
               f"Contact: <sip:raw@127.0.0.1:{self.port}>\r\nMax-Forwards: 70\r\n{extra}"
               + ("Content-Type: application/sdp\r\n" if body else "") + f"Content-Length: {len(body)}\r\n\r\n{body}")
        self.sock.sendto(msg.encode(), ("127.0.0.1", self.gw.port))

    def final(self, call_id: str) -> tuple[int, str]:
        """The next final response of `call_id` (status, the message)."""
        while True:
            msg = self.sock.recv(65535).decode()
            if msg.startswith("SIP/2.0 ") and f"Call-ID: {call_id}" in msg and int(msg.split()[1]) >= 200:
                return int(msg.split()[1]), msg


def to_tag(msg: str) -> str:
    m = re.search(r"^To:.*;tag=([^;\r\n]+)", msg, re.M)
    assert m, msg
    return m.group(1)


def test_an_invite_replacing_a_live_call_is_refused_and_the_call_goes_on(gateway: Gateway):
    uac = RawUac(gateway)
    try:
        uac.send("INVITE", "repl-a@raw", "ta", 1, "a1")
        code, ok = uac.final("repl-a@raw")
        assert code == 200, ok
        uac.send("ACK", "repl-a@raw", "ta", 1, "a2", to_tag(ok))
        gateway.wait_event("call_answered", 5, call="repl-a@raw")
        replaces = f"Replaces: repl-a@raw;to-tag={to_tag(ok)};from-tag=ta\r\n"
        uac.send("INVITE", "repl-b@raw", "tb", 1, "b1", extra=replaces)
        code, refused = uac.final("repl-b@raw")
        uac.send("ACK", "repl-b@raw", "tb", 1, "b1", to_tag(refused))  # a non-2xx's ACK: same branch
        assert code == 403 and "not supported" in refused.splitlines()[0], refused
        assert gateway.wait_event("replaces_refused", 1, call="repl-a@raw")["code"] == 403
        assert not gateway.events("call_end") or all(e["call"] != "repl-a@raw" for e in gateway.events("call_end"))
        uac.send("BYE", "repl-a@raw", "ta", 2, "a3", to_tag(ok))
        assert uac.final("repl-a@raw")[0] == 200, "the replaced call was not up any more"
        assert gateway.wait_event("call_end", 5, call="repl-a@raw")["reason"] == "remote_200"
    finally:
        uac.sock.close()


class EventSink:
    """The caller's RTP socket: keeps the keys of the RFC 4733 events that reach it (RFC 4733 2.3: payload octet 0
    is the event, the top bit of octet 1 ends it; the end packet is sent three times, with the event's timestamp)."""

    KEYS = "0123456789*#ABCD"

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.ended: dict[int, tuple[str, int, int]] = {}
        """RTP timestamp -> (key, payload type, duration in samples) of each event whose end packet came."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                continue
            pt, payload = data[1] & 0x7F, data[12:]
            if len(payload) == 4 and payload[1] & 0x80:
                ts = int.from_bytes(data[4:8], "big")
                self.ended[ts] = (self.KEYS[payload[0]], pt, int.from_bytes(payload[2:4], "big"))

    def keys(self) -> str:
        return "".join(k for _, (k, _, _) in sorted(self.ended.items()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def info_step(key: str) -> str:
    """sipp scenario lines: take the agent's SIP INFO for `key` (checking its dtmf-relay body) and answer 200."""
    signal = re.escape(key).replace("\\#", "#")
    return f"""  <recv request="INFO"><action>
    <ereg regexp="application/dtmf-relay" search_in="hdr" header="Content-Type:" check_it="true" assign_to="ct"/>
    <ereg regexp="^Signal=({signal})[[:space:]]+Duration=([1-9][0-9]*)" search_in="body" check_it="true"
          assign_to="sig,key,ms"/>
    <log message="INFO Signal=[$key] Duration=[$ms]"/>
  </action></recv>
{reply("200 OK")}"""


def keys_scenario(port: int, infos: str) -> str:
    """Call offering RTP to `port` (PCMU and telephone-event 101), take an INFO per key of `infos` (any other request
    fails the call), then the agent's BYE."""
    offer = f"""v=0
o=sipp 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio {port} RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16"""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="keys from the agent">
{invite(offer)}  <recv response="200" rrs="true"/>
{ack(200)}{"".join(info_step(k) for k in infos)}  <recv request="BYE"/>
{reply("200 OK")}{'  <Reference variables="ct,sig"/>' if infos else ""}
</scenario>
"""


@pytest.mark.parametrize("mode", ["rfc4733", "info"])
def test_the_agents_keys_reach_the_caller_as_rfc4733_events_or_sip_info(gateway: Gateway, tmp_path: Path, mode: str):
    sink = EventSink()
    try:
        (tmp_path / "keys.xml").write_text(keys_scenario(sink.port, AGENT_KEYS if mode == "info" else ""))
        before = len(gateway.events("call_incoming"))
        r = sipp(["-sf", "keys.xml", "-s", "keys4733" if mode == "rfc4733" else "keysinfo",
                  f"127.0.0.1:{gateway.port}", "-trace_logs"], tmp_path, timeout=30)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        [incoming] = gateway.events("call_incoming")[before:]
        call_id = incoming["call"]
        sent = gateway.wait_event("dtmf_sent", 5, call=call_id)
        assert (sent["digits"], sent["method"]) == (AGENT_KEYS, mode)
        assert gateway.wait_event("call_end", 10, call=call_id)["reason"] == "keys_sent"
        if mode == "rfc4733":
            assert sink.keys() == AGENT_KEYS, sink.ended
            assert {(pt, ms > 0) for _, pt, ms in sink.ended.values()} == {(101, True)}
        else:  # sipp checked each INFO's Content-Type and body, in order; no RTP event came
            logged = "".join(p.read_text() for p in tmp_path.glob("keys_*_logs.log"))
            assert re.findall(r"INFO Signal=(\S) Duration=(\d+)", logged) == [(k, "160") for k in AGENT_KEYS], logged
            assert sink.ended == {}
    finally:
        sink.close()
