"""RFC 3261 12.1.1: which INVITEs need a `sips:` Contact in the answer."""

from __future__ import annotations

import pytest

from telephony.sips import needs_sips_contact


def invite(uri: str, *headers: str) -> str:
    lines = [f"INVITE {uri} SIP/2.0", "Via: SIP/2.0/TLS 127.0.0.1:5071;branch=z9hG4bK1",
             "From: <sip:caller@127.0.0.1>;tag=1", f"To: <{uri}>", "Call-ID: c1", "CSeq: 1 INVITE", *headers,
             "Content-Length: 0"]
    return "\r\n".join(lines) + "\r\n\r\n"


@pytest.mark.parametrize(("uri", "headers", "needed"), [
    ("sips:100@gw.example", ["Contact: <sips:caller@127.0.0.1:5071>"], True),
    ("SIPS:100@gw.example", ["Contact: <sip:caller@127.0.0.1:5071;transport=tls>"], True),
    ("sip:100@gw.example;transport=tls", ["Contact: <sip:caller@127.0.0.1:5071;transport=tls>"], False),
    ("sip:100@gw.example", ["Contact: sip:caller@127.0.0.1"], False),
    # no Record-Route: the Contact decides, long or compact form
    ("sip:100@gw.example", ['Contact: "Desk" <sips:caller@127.0.0.1:5071>'], True),
    ("sip:100@gw.example", ["m: sips:caller@127.0.0.1:5071"], True),
    # a Record-Route: its top value decides, not the Contact
    ("sip:100@gw.example", ["Record-Route: <sip:proxy.example;lr>, <sips:edge.example;lr>",
                            "Contact: <sips:caller@127.0.0.1>"], False),
    ("sip:100@gw.example", ["Record-Route: <sips:proxy.example;lr>", "Record-Route: <sip:edge.example;lr>",
                            "Contact: <sip:caller@127.0.0.1>"], True),
    ("sip:100@gw.example", ['Contact: "x <sip:not@this>" <sips:caller@127.0.0.1>'], True),
    ("sip:100@gw.example", [], False),
])
def test_the_answer_needs_a_sips_contact_when_the_invite_names_sips(uri: str, headers: list[str],
                                                                    needed: bool) -> None:
    assert needs_sips_contact(invite(uri, *headers)) is needed
