"""pcap on demand: SIP messages logged as pjsip logs them go through the real SIP trace writer, come back whole from
`parse_trace`, and land with RTP packets in a pcap that dpkt reads."""

from __future__ import annotations

import re
import socket
import stat
import time
from pathlib import Path

import dpkt
import pytest

from telephony.pcap import CallPcap, PcapError, RtpCapture, merge, parse_trace, read_capture, split_address
from telephony.sip_trace import SipTrace, trace_path

SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
INVITE = (b"INVITE sip:echo@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40192;branch=z9hG4bK1\r\n"
          b"Call-ID: abc@host\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: "
          + str(len(SDP)).encode() + b"\r\n\r\n" + SDP)
BYE_OK = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP [::1]:40192;branch=z9hG4bK2\r\nCall-ID: abc@host\r\nCSeq: 2 BYE\r\n" \
         b"Content-Length: 0\r\n\r\n"


def logged(direction: str, data: bytes, peer: str) -> str:
    """pjsip's message log entry, stripped as the gateway's log writer strips it."""
    where = "from" if direction == "RX" else "to"
    return (f"{direction} {len(data)} bytes Request msg X/cseq=1 (rdata0x1) {where} UDP {peer}:\n"
            f"{data.decode()}\n--end msg--").rstrip()


def test_a_trace_comes_back_as_whole_messages(tmp_path: Path):
    trace = SipTrace(tmp_path)
    assert trace.write(logged("RX", INVITE, "127.0.0.1:40192"))
    assert trace.write(logged("TX", BYE_OK, "[::1]:40192"))
    text = trace_path(tmp_path, "abc@host").open(newline="").read()
    invite, ok = parse_trace(text)
    assert (invite.data, invite.sent, invite.transport, invite.peer) == (INVITE, False, "UDP", ("127.0.0.1", 40192))
    assert (ok.data, ok.sent, ok.peer) == (BYE_OK, True, ("::1", 40192))  # the stripped LFs are back
    assert 0 <= ok.time - invite.time < 1
    assert parse_trace("not a trace\n") == []


def test_a_call_pcap_holds_its_sip_and_rtp_in_time_order(tmp_path: Path):
    trace = SipTrace(tmp_path / "sip")
    trace.write(logged("RX", INVITE, "127.0.0.1:40192"))
    pcap = CallPcap(tmp_path / "pcap", trace_path(tmp_path / "sip", "abc@host"))
    pcap.local_ip = "127.0.0.1"
    assert pcap.finish("0.0.0.0", 5060) == {"pcap": str(tmp_path / "pcap/abc@host.pcap"), "pcap_sip": 1,
                                            "pcap_rtp": 0}
    assert stat.S_IMODE((tmp_path / "pcap/abc@host.pcap").stat().st_mode) == 0o640  # the call's audio
    [(ts, frame)] = list(dpkt.pcap.Reader((tmp_path / "pcap/abc@host.pcap").open("rb")))
    ip = dpkt.ethernet.Ethernet(frame).data
    assert (ip.src, ip.dst, ip.data.sport, ip.data.dport) == (bytes([127, 0, 0, 1]),) * 2 + (40192, 5060)
    assert ip.data.data == INVITE and ip.len == 20 + 8 + len(INVITE) and ip.data.ulen == 8 + len(INVITE)

    rtp = dpkt.rtp.RTP(pt=0, seq=7, ts=160, ssrc=1, data=b"\xff" * 160)
    rtp.version = 2
    udp = dpkt.udp.UDP(sport=4000, dport=4002, data=bytes(rtp))
    udp.ulen = len(udp)
    packet = dpkt.ip.IP(src=bytes([127, 0, 0, 1]), dst=bytes([127, 0, 0, 1]), p=17, data=udp)
    packet.len = len(packet)
    merge(tmp_path / "both.pcap", [(ts + 1, bytes(packet)), (ts, bytes(ip))])
    frames = read_capture(tmp_path / "both.pcap")
    assert [f[0] for f in frames] == [ts, ts + 1]
    back = dpkt.rtp.RTP(dpkt.ip.IP(frames[1][1]).data.data)
    assert (back.version, back.pt, back.seq, len(back.data)) == (2, 0, 7, 160)


def test_capture_files_that_are_not_pcaps_and_addresses(tmp_path: Path):
    (tmp_path / "x.pcap").write_bytes(b"nope" * 10)
    with pytest.raises(PcapError, match=re.escape(f"{tmp_path}/x.pcap: not a pcap file")):
        read_capture(tmp_path / "x.pcap")
    assert split_address("[::1]:4000") == ("::1", 4000) and split_address("10.0.0.1:20000") == ("10.0.0.1", 20000)
    assert RtpCapture(tmp_path / "never.pcap", (4000, 4001)).stop() == []  # never started: nothing, no error


def test_tcpdump_captures_the_ports_udp_and_says_why_it_cannot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    capture = RtpCapture(tmp_path / "rtp.tmp", (port, port + 1))
    capture.start()
    try:
        tx.sendto(b"other port", ("127.0.0.1", port + 2))
        for i in range(3):
            tx.sendto(bytes([0x80, 0, 0, i]) + b"\0" * 168, ("127.0.0.1", port))
        deadline = time.monotonic() + 5  # tcpdump writes each packet as it takes it (-U); SIGINT drops the rest
        while (tmp_path / "rtp.tmp").stat().st_size < 24 + 3 * (16 + 172) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        packets = capture.stop()
        rx.close()
        tx.close()
    assert [dpkt.ip.IP(p).data.data[3] for _, p in packets] == [0, 1, 2] and not (tmp_path / "rtp.tmp").exists()
    (tmp_path / "adir").mkdir()
    with pytest.raises(PcapError, match="tcpdump did not start capturing: .*adir"):
        RtpCapture(tmp_path / "adir", (port,)).start()
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PcapError, match="tcpdump is not installed"):
        RtpCapture(tmp_path / "x.tmp", (port,)).start()
