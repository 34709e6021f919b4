"""Per-call SIP traces: with `records.sip_trace`, every SIP message of a call lands in its own file, named in the
call's record; two calls at once do not mix."""

from __future__ import annotations

import concurrent.futures
import re
import time
from pathlib import Path

import yaml

from telephony.records import read_records
from tests.integration.peers import call, free_port, gateway_config, start_gateway


def test_each_call_gets_its_sip_messages_in_its_own_file(tmp_path: Path) -> None:
    port = free_port()
    cfg = yaml.safe_load(gateway_config(port))
    cfg["records"] = {"sip_trace": True}
    gw = start_gateway(yaml.safe_dump(cfg), tmp_path, port)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            calls = [pool.submit(call, f"sip:echo@127.0.0.1:{port}", "--duration", "2") for _ in range(2)]
            assert all(c.result()["answered"] for c in calls)
        deadline = time.monotonic() + 10
        while len(ends := gw.events("call_end")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        assert gw.stop() == 0, "\n".join(gw.lines[-20:])
    assert len(ends) == 2 and ends[0]["call"] != ends[1]["call"]
    recs = {r["call"]: r for r in read_records(tmp_path / "records" / "calls.db")[0]}
    for end in ends:
        path = Path(end["sip_trace"])
        assert path.parent == tmp_path / "records" / "sip" and recs[end["call"]]["sip_trace"] == str(path)
        text = path.read_text()
        firsts = re.findall(r"^\S+ ([RT]X) \d+ bytes (?:Request|Response) msg (\w+)", text, re.M)
        assert [m for m in firsts if m[1] != "100"] == [("RX", "INVITE"), ("TX", "180"), ("TX", "200"),
                                                         ("RX", "ACK"), ("RX", "BYE"), ("TX", "200")], firsts
        for kind in (r"^INVITE sip:echo@", r"^SIP/2\.0 200 OK", r"^ACK sip:", r"^BYE sip:"):
            assert re.search(kind, text, re.M), (kind, text[:2000])
        assert set(re.findall(r"^Call-ID: (\S+)", text, re.M)) == {end["call"]}
