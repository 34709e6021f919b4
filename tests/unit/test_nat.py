"""Which callers are behind NAT: an INVITE whose Contact is not where it came from (telephony/nat.py)."""

from __future__ import annotations

from telephony.nat import nat_route


def invite(contact: str, via: str = "SIP/2.0/UDP 192.168.1.20:5060;rport;branch=z9hG4bK1", extra: str = "") -> str:
    return (f"INVITE sip:echo@203.0.113.5 SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:echo@x>\r\n"
            f"Call-ID: c1\r\nCSeq: 1 INVITE\r\nContact: {contact}\r\n{extra}Content-Length: 0\r\n\r\n")


def test_a_private_contact_behind_nat_gets_a_route_to_the_source():
    assert nat_route(invite("<sip:a@192.168.1.20:5060>"), "198.51.100.7:40012") == "<sip:198.51.100.7:40012;lr>"
    assert nat_route(invite("sip:a@192.168.1.20"), "198.51.100.7:5060") == "<sip:198.51.100.7:5060;lr>"
    # same address, other port (a port-mapping NAT or a UA sending from another socket)
    assert nat_route(invite("<sip:a@198.51.100.7:5060>;expires=60"), "198.51.100.7:5062") is not None


def test_a_contact_that_is_the_source_is_left_alone():
    assert nat_route(invite("<sip:a@127.0.0.1:5070>"), "127.0.0.1:5070") is None
    assert nat_route(invite("sip:a@127.0.0.1"), "127.0.0.1:5060") is None  # the default port


def test_a_tcp_caller_behind_nat_gets_a_route_over_its_connection():
    tcp = "SIP/2.0/TCP 192.168.1.20:5060;branch=z9hG4bK1"
    route = "<sip:198.51.100.7:40012;transport=tcp;lr>"
    assert nat_route(invite("<sip:a@192.168.1.20:5060;transport=tcp>", via=tcp), "198.51.100.7:40012") == route
    assert nat_route(invite("<sip:a@192.168.1.20:5060>", via=tcp), "198.51.100.7:40012") == route
    # not behind NAT: a TCP caller's source port is an ephemeral one, its Contact's port the one it listens on
    assert nat_route(invite("<sip:a@198.51.100.7:5060;transport=tcp>", via=tcp), "198.51.100.7:40012") is None
    assert nat_route(invite("<sip:a@192.168.1.20;transport=tls>", via=tcp), "198.51.100.7:40012") is None


def test_a_tls_caller_behind_nat_gets_a_route_over_its_connection():
    tls = "SIP/2.0/TLS 192.168.1.20:5061;branch=z9hG4bK1"
    route = "<sip:198.51.100.7:40012;transport=tls;lr>"
    assert nat_route(invite("<sip:a@192.168.1.20:5061;transport=tls>", via=tls), "198.51.100.7:40012") == route
    assert nat_route(invite("<sips:a@192.168.1.20:5061>", via=tls), "198.51.100.7:40012") == route
    assert nat_route(invite("<sips:a@192.168.1.20:5061;transport=tcp>", via=tls), "198.51.100.7:40012") == route
    assert nat_route(invite("<sip:a@198.51.100.7:5061;transport=tls>", via=tls), "198.51.100.7:40012") is None
    assert nat_route(invite("<sip:a@192.168.1.20;transport=tcp>", via=tls), "198.51.100.7:40012") is None


def test_only_requests_without_record_route_and_with_an_address_in_contact():
    ws = "SIP/2.0/WS 192.168.1.20;branch=z9hG4bK1"
    assert nat_route(invite("<sip:a@192.168.1.20;transport=ws>", via=ws), "198.51.100.7:40012") is None
    assert nat_route(invite("<sip:a@192.168.1.20:5060;transport=tcp>"), "198.51.100.7:40012") is None  # UDP Via
    assert nat_route(invite("<sip:a@192.168.1.20:5060>", extra="Record-Route: <sip:sbc;lr>\r\n"),
                     "198.51.100.7:40012") is None  # a proxy on the path handles it
    assert nat_route(invite("<sip:a@phone.example.com>"), "198.51.100.7:40012") is None
    proxied = "SIP/2.0/UDP 198.51.100.9;branch=z9hG4bK2\r\nVia: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK1"
    assert nat_route(invite("<sip:a@192.168.1.20:5060>", via=proxied), "198.51.100.9:5060") is None
    assert nat_route(invite("<sip:a@192.168.1.20:5060>", via=proxied.replace("\r\nVia:", ",")),
                     "198.51.100.9:5060") is None
    assert nat_route(invite("<bogus>"), "198.51.100.7:40012") is None
