"""The impairment proxy's message handling and the relay's seeded drops, on loopback sockets."""

from __future__ import annotations

import socket
import time

import pytest

from telephony.simulator.impair import ImpairError, Relay, SdpProxy, framed, hop, next_hop
from telephony.simulator.shaper import LineImpairment

SDP = "v=0\r\no=- 1 1 IN IP4 10.9.9.9\r\ns=-\r\nc=IN IP4 10.9.9.9\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n" \
      "a=rtcp:4001 IN IP4 10.9.9.9\r\n"


def message(first: str, *headers: str, body: str = "") -> str:
    return "\r\n".join([first, *headers, f"Content-Length: {len(body)}"]) + "\r\n\r\n" + body


@pytest.fixture
def proxy():
    p = SdpProxy()
    yield p
    p.close()


def test_an_invite_gets_our_via_loses_our_route_and_offers_the_relay(proxy: SdpProxy):
    proxy.arm(LineImpairment(loss_pct=10), "s")
    here = f"{proxy.addr[0]}:{proxy.addr[1]}"
    invite = message("INVITE sip:100@127.0.0.7:5070 SIP/2.0", "Via: SIP/2.0/UDP 127.0.0.1:5999;rport",
                     "Max-Forwards: 70", "Call-ID: c1", f"Route: <sip:{here};lr>", body=SDP)
    out, dest, transport = proxy._forward(invite)
    assert dest == ("127.0.0.7", 5070) and transport == "udp"
    lines = out.split("\r\n")
    assert lines[1].startswith(f"Via: SIP/2.0/UDP {here};branch=z9hG4bK") and "Route:" not in out
    assert "Max-Forwards: 69" in lines
    relay = proxy.relays["c1"]
    assert relay.phone == ("10.9.9.9", 4000)
    assert f"m=audio {relay.port} RTP/AVP 0" in out and f"a=rtcp:{relay.port + 1} IN IP4 127.0.0.1" in out
    body = out.split("\r\n\r\n", 1)[1]
    assert f"Content-Length: {len(body)}" in out
    # the answer: our Via value goes (also from a joined Via line), the far end's media is learned
    answer = SDP.replace("4000", "6000").replace("4001", "6001")
    out, dest, transport = proxy._forward(message("SIP/2.0 200 OK", f"Via: SIP/2.0/UDP {here};branch=x, SIP/2.0/UDP "
                                                  "127.0.0.1:5999;rport", "Call-ID: c1", body=answer))
    assert dest == ("127.0.0.1", 5999) and transport == "udp"
    assert "Via: SIP/2.0/UDP 127.0.0.1:5999;rport" in out and here not in out
    assert relay.far == ("10.9.9.9", 6000) and f"m=audio {relay.port} " in out


def test_arms_queue_up_for_the_calls_of_a_phone_in_the_order_their_invites_come(proxy: SdpProxy):
    """One phone dials several calls: each arms before its INVITE; a call whose INVITE never went takes its arm
    back; a digest retry (same Call-ID) takes none."""
    line = LineImpairment(loss_pct=5)
    for seed in ("7:0", "7:1", "7:2"):
        proxy.arm(line, seed)
    proxy.disarm()  # 7:2 sent no INVITE
    proxy.arm(line, "7:3")

    def invite(call_id: str) -> None:
        proxy._forward(message("INVITE sip:100@127.0.0.7:5070 SIP/2.0", "Via: SIP/2.0/UDP 127.0.0.1:5999;rport",
                               f"Call-ID: {call_id}", body=SDP))

    for call_id in ("a", "a", "b", "c", "d"):
        invite(call_id)
    assert {k: r.seed for k, r in proxy.relays.items()} == {"a": "7:0", "b": "7:1", "c": "7:3"}


def test_hop_refuses_what_it_cannot_relay():
    assert hop("<sip:127.0.0.1:5080;lr>") == ("127.0.0.1", 5080) and hop("sip:x@host") == ("host", 5060)
    assert next_hop("<sip:127.0.0.1:5080;transport=TCP;lr>") == (("127.0.0.1", 5080), "tcp")
    assert next_hop("sip:x@127.0.0.1:5062;transport=tls") == (("127.0.0.1", 5062), "tls")
    assert next_hop("<sips:x@127.0.0.1;lr>") == (("127.0.0.1", 5061), "tls")
    with pytest.raises(ImpairError, match="UDP, TCP and TLS only"):
        hop("sip:x@127.0.0.1:5060;transport=ws")


def test_stream_framing_by_content_length():
    a = message("SIP/2.0 100 Trying", "Via: x").encode()
    b = message("SIP/2.0 200 OK", "Via: x", body="v=0\r\n").encode()
    got, rest = framed(b"\r\n\r\n" + a + b[:-3])
    assert got == [a] and rest == b[:-3]
    got, rest = framed(rest + b[-3:])
    assert got == [b] and rest == b""


def test_a_tcp_next_hop_gets_the_request_and_its_answer_comes_back_over_udp(proxy: SdpProxy):
    """The phone sends over UDP; a Request-URI with ;transport=tcp goes over a TCP connection with a TCP Via, and
    the far end's response on that connection goes back to the phone's UDP Via."""
    far = socket.create_server(("127.0.0.1", 0))
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    phone.settimeout(5)
    port, me = far.getsockname()[1], phone.getsockname()[1]
    here = f"{proxy.addr[0]}:{proxy.addr[1]}"
    try:
        phone.sendto(message(f"OPTIONS sip:100@127.0.0.1:{port};transport=tcp SIP/2.0",
                             f"Via: SIP/2.0/UDP 127.0.0.1:{me};rport", "Max-Forwards: 70", "Call-ID: t1",
                             f"Route: <sip:{here};lr>").encode(), proxy.addr)
        far.settimeout(5)
        conn, _ = far.accept()
        conn.settimeout(5)
        buffer = b""
        while not framed(buffer)[0]:
            buffer += conn.recv(4096)
        [req], _ = framed(buffer)
        lines = req.decode().split("\r\n")
        assert lines[0].endswith(";transport=tcp SIP/2.0") and lines[1].startswith(f"Via: SIP/2.0/TCP {here};")
        vias = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Via:")]
        conn.sendall(message("SIP/2.0 200 OK", f"Via: {', '.join(vias)}", "Call-ID: t1").encode())
        reply = phone.recv(4096).decode()
        assert reply.startswith("SIP/2.0 200 OK") and here not in reply and f"127.0.0.1:{me};rport" in reply
        conn.close()
    finally:
        far.close()
        phone.close()
    assert proxy.errors == []


def test_the_relay_drops_the_same_packets_for_the_same_seed():
    def run(seed: str) -> list[int]:
        relay = Relay("127.0.0.1", LineImpairment(loss_pct=20), seed)
        far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        far.bind(("127.0.0.1", 0))
        phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        phone.bind(("127.0.0.1", 0))
        phone.settimeout(0.5)
        relay.phone, relay.far = phone.getsockname(), far.getsockname()
        for i in range(100):
            far.sendto(i.to_bytes(2, "big"), ("127.0.0.1", relay.port))
            time.sleep(0.001)
        got = []
        try:
            while len(got) < 100:
                got.append(int.from_bytes(phone.recv(10), "big"))
        except TimeoutError:
            pass
        imp = relay.close()
        far.close()
        phone.close()
        assert imp.rx_packets == 100 and sorted(set(range(100)) - set(got)) == imp.rx_dropped
        return imp.rx_dropped

    a, b, c = run("1"), run("1"), run("2")
    assert a == b and a != c and 5 < len(a) < 40
