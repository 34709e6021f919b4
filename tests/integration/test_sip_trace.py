"""Per-call SIP traces and pcaps: with `records.sip_trace`, every SIP message of a call lands in its own file, named
in the call's record, and two calls at once do not mix; a route's `pcap: true` or the control endpoint's
`POST /calls/<Call-ID>/pcap` writes a call's SIP and RTP as a pcap that dpkt reads back."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dpkt
import pytest
import yaml

from telephony.records import read_records
from tests.integration.peers import Gateway, call, free_port, gateway_config, start_gateway

TOKEN = "pcap-control-token"
CONTROL: dict[int, int] = {}
"""The control port of the gateway, by its SIP port."""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port = free_port()
    CONTROL[port] = free_port()
    os.environ["VG_TEST_PCAP_TOKEN"] = TOKEN
    cfg = yaml.safe_load(gateway_config(port))
    cfg["records"] = {"sip_trace": True}
    cfg["routes"].insert(0, {"match": "captured", "agent": "echo", "pcap": True})
    cfg["control"] = {"listen": "127.0.0.1", "port": CONTROL[port], "token_env": "VG_TEST_PCAP_TOKEN"}
    g = start_gateway(yaml.safe_dump(cfg), tmp_path_factory.mktemp("gw-trace"), port)
    yield g
    assert g.stop() == 0, "\n".join(g.lines[-20:])


def records(gw: Gateway, calls: set[str], timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """The records of `calls`, once all are written (the row follows the `call_end` event)."""
    deadline = time.monotonic() + timeout
    while True:
        recs = {r["call"]: r for r in read_records(gw.config.parent / "records" / "calls.db")[0]}
        if calls <= set(recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.1)


def test_each_call_gets_its_sip_messages_in_its_own_file(gw: Gateway) -> None:
    before = {e["call"] for e in gw.events("call_end")}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(call, f"sip:echo@127.0.0.1:{gw.port}", "--duration", "2") for _ in range(2)]
        assert all(c.result()["answered"] for c in calls)
    deadline = time.monotonic() + 10
    while len(ends := [e for e in gw.events("call_end") if e["call"] not in before]) < 2:
        assert time.monotonic() < deadline, ends
        time.sleep(0.1)
    assert ends[0]["call"] != ends[1]["call"]
    recs = records(gw, {e["call"] for e in ends})
    for end in ends:
        path = Path(end["sip_trace"])
        assert path.parent == gw.config.parent / "records" / "sip" and recs[end["call"]]["sip_trace"] == str(path)
        assert "pcap" not in end  # the echo route does not ask for one
        text = path.read_text()
        firsts = re.findall(r"^\S+ ([RT]X) \d+ bytes (?:Request|Response) msg (\w+)", text, re.M)
        assert [m for m in firsts if m[1] != "100"] == [("RX", "INVITE"), ("TX", "180"), ("TX", "200"),
                                                         ("RX", "ACK"), ("RX", "BYE"), ("TX", "200")], firsts
        for kind in (r"^INVITE sip:echo@", r"^SIP/2\.0 200 OK", r"^ACK sip:", r"^BYE sip:"):
            assert re.search(kind, text, re.M), (kind, text[:2000])
        assert set(re.findall(r"^Call-ID: (\S+)", text, re.M)) == {end["call"]}


def read_pcap(path: str) -> tuple[list[bytes], list[tuple[int, int, dpkt.rtp.RTP]]]:
    """The SIP messages (UDP payloads starting with a method or SIP/2.0) and the RTP packets (sport, dport, RTP)."""
    sip: list[bytes] = []
    rtp: list[tuple[int, int, dpkt.rtp.RTP]] = []
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == dpkt.pcap.DLT_EN10MB
        for _, frame in reader:
            udp = dpkt.ethernet.Ethernet(frame).data.data
            assert isinstance(udp, dpkt.udp.UDP)
            if re.match(rb"^(SIP/2\.0 \d{3}|[A-Z]+ sip:)", udp.data):
                sip.append(udp.data)
            elif len(udp.data) >= 12 and udp.data[0] >> 6 == 2 and udp.data[1] & 0x7F < 64:  # RTP, not RTCP
                rtp.append((udp.sport, udp.dport, dpkt.rtp.RTP(udp.data)))
    return sip, rtp


def test_a_route_with_pcap_writes_the_calls_sip_and_rtp(gw: Gateway) -> None:
    res = call(f"sip:captured@127.0.0.1:{gw.port}", "--duration", "2")
    assert res["answered"], res
    inc = gw.wait_event("call_incoming", 5, called="captured")
    end = gw.wait_event("call_end", 15, call=inc["call"])
    started = gw.wait_event("pcap_started", 1, call=inc["call"])
    assert end["pcap"] == str(gw.config.parent / "records" / "pcap" / f"{Path(end['sip_trace']).stem}.pcap")
    sip, rtp = read_pcap(end["pcap"])
    assert sip[0].startswith(b"INVITE sip:captured@") and any(m.startswith(b"BYE ") for m in sip)
    assert all(re.search(rb"^Call-ID: " + re.escape(inc["call"].encode()) + rb"\r$", m, re.M) for m in sip)
    for m in sip:  # whole messages: the body is as long as Content-Length says, lines end in CRLF
        head, _, body = m.partition(b"\r\n\r\n")
        assert b"\r\r" not in m and m.endswith(b"\r\n") and head.count(b"\n") == head.count(b"\r\n"), m
        assert len(body) == int(re.search(rb"^Content-Length:\s*(\d+)", head, re.M | re.I).group(1)), m
    ours = int(started["rtp"].rsplit(":", 1)[1])
    sent = [p for s, d, p in rtp if s == ours]
    heard = [p for s, d, p in rtp if d == ours]
    # a 2 s PCMU call at 50 packets/s each way; the first ones may pass before tcpdump listens
    assert len(sent) > 50 and len(heard) > 50 and {p.pt for p in sent + heard} == {0}, (len(sent), len(heard))
    assert end["pcap_sip"] == len(sip) and end["pcap_rtp"] >= len(rtp)  # RTP and RTCP
    assert records(gw, {inc["call"]})[inc["call"]]["pcap"] == end["pcap"]


def control(gw: Gateway, path: str, token: str = TOKEN) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{CONTROL[gw.port]}{path}", data=b"", method="POST",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), json.loads(e.read())


def test_the_control_endpoint_captures_a_live_call_on_request(gw: Gateway) -> None:
    assert control(gw, "/calls/no-such-call/pcap") == (404, {"error": "no live SIP call with Call-ID 'no-such-call'"})
    assert control(gw, "/calls/no-such-call/pcap", "wrong")[0] == 401
    before = {e["call"] for e in gw.events("call_answered")}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        caller = pool.submit(call, f"sip:echo@127.0.0.1:{gw.port}", "--duration", "3")
        deadline = time.monotonic() + 10
        while not (new := [e["call"] for e in gw.events("call_answered") if e["call"] not in before]):
            assert time.monotonic() < deadline, "the call was not answered"
            time.sleep(0.05)
        status, body = control(gw, f"/calls/{new[0]}/pcap")
        assert status == 202 and body["call"] == new[0] and body["pcap"].endswith(".pcap"), body
        assert caller.result()["answered"]
    end = gw.wait_event("call_end", 15, call=new[0])
    assert end["pcap"] == body["pcap"]
    sip, rtp = read_pcap(body["pcap"])
    assert sip[0].startswith(b"INVITE sip:echo@") and len(rtp) > 50  # the SIP from the start, RTP from the request
