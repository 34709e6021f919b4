from telephony.sdp import prefer_codec

LOCAL = """v=0\r
o=- 1 2 IN IP4 127.0.0.1\r
s=pjmedia\r
c=IN IP4 127.0.0.1\r
t=0 0\r
m=audio 4000 RTP/AVP 9 0 8 101\r
a=rtpmap:9 G722/8000\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:101 telephone-event/8000\r
a=fmtp:101 0-16\r
a=sendrecv\r
"""


def remote(fmts: str) -> str:
    return f"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 5000 RTP/AVP {fmts}\r\na=rtpmap:101 telephone-event/8000\r\n"


def test_g722_kept_alone_when_offered_even_second():
    out = prefer_codec(LOCAL, remote("0 9 101"), ["G722", "PCMU", "PCMA"])
    assert "m=audio 4000 RTP/AVP 9 101\r\n" in out
    assert "PCMU" not in out and "PCMA" not in out and "a=fmtp:101 0-16" in out


def test_falls_back_in_our_order():
    out = prefer_codec(LOCAL, remote("8 0"), ["G722", "PCMU", "PCMA"])
    assert "m=audio 4000 RTP/AVP 0 101\r\n" in out


def test_nothing_common_leaves_sdp_for_pjsua_to_refuse():
    assert prefer_codec(LOCAL, remote("96"), ["G722", "PCMU"]) == LOCAL
