"""Security and robustness on the wire, against one gateway with `sip.allow` and `sip.users`: a source ACL and digest
credentials for calls from no trunk (sipp from 127.0.0.1 and 127.0.0.2), the transfer guard (a scripted transfer
to a target its route does not allow: no REFER, the fallback is spoken), and malformed RTP sent to a live call's
RTP port (tests/fuzz_rtp.py): that call and another one keep echoing, and the gateway does not crash or spin.
No secret (trunk password, control token, S2S API key, a digest user's password) reaches a log, trace, record or
CLI output."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from telephony.records import read_records
from tests.fuzz_rtp import blast
from tests.integration.kamailio import REALM, Kamailio
from tests.integration.peers import (
    VENV_BIN,
    Gateway,
    ack,
    free_port,
    gateway_config,
    invite,
    reply,
    rtp_range,
    sipp,
    start_gateway,
)
from tests.integration.rtp_peer import RtpPeer, answer_port, media_call
from tests.integration.test_trunks import PCMU, authenticated_call, call_with_headers, scenario
from tests.servers.openai_realtime import RealtimeServer

PASSWORD = "alice-s3cret"
CONTROL_TOKEN = "sec-control-token"
TRUNK_PASSWORD = "trunk-pw-9d41c7"
S2S_KEY = "sk-s2s-key-5be2f0"
FRAUD_TARGET = "sip:+882100123@127.0.0.1:9"
BYE_RECEIVED = f"""  <recv request="BYE"/>
{reply("200 OK")}"""


@pytest.fixture(scope="module")
def registrar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    k = Kamailio(free_port(), tmp_path_factory.mktemp("kamailio-sec"), TRUNK_PASSWORD, "vgsec")
    k.start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def rt() -> Iterator[RealtimeServer]:
    with RealtimeServer() as server:
        yield server


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, registrar: Kamailio, rt: RealtimeServer) -> Iterator[Gateway]:
    os.environ.update(VG_TEST_ALICE_PW=PASSWORD, VG_TEST_SEC_S2S_KEY=S2S_KEY)
    port = free_port()
    cfg = yaml.safe_load(gateway_config(port))
    cfg["records"]["sip_trace"] = True
    cfg["sip"].update(allow=["127.0.0.1/32"], users={"alice": {"password_env": "VG_TEST_ALICE_PW"}},
                      max_message_bytes=2048, invite_rate={"per_source": 8, "window_s": 2})
    cfg["agents"] = {"echo": {"type": "echo"}, "fraud": {  # no speech engines to prepare: it starts in seconds
        "type": "scripted", "voice": "en", "start": "a",
        "nodes": {"a": [{"transfer": FRAUD_TARGET, "timeout_s": 5},
                        {"say": "Sorry, that number is not allowed."}, {"hangup": "transfer_refused"}]},
    }, "s2s": {"type": "openai_realtime", "url": rt.url, "api_key_env": "VG_TEST_SEC_S2S_KEY"}}
    cfg["routes"] = [{"match": "fraud", "agent": "fraud", "transfer_allowed": ["/^sip:\\+4420\\d+@/"]},
                     {"match": "echo", "agent": "echo"}, {"match": "s2s", "agent": "s2s"}]
    os.environ.update(VG_TEST_SEC_CONTROL=CONTROL_TOKEN, VG_TEST_SEC_TRUNK_PW=TRUNK_PASSWORD)
    cfg["control"] = {"listen": "127.0.0.1", "port": free_port(), "token_env": "VG_TEST_SEC_CONTROL"}
    cfg["trunks"] = {"limited": {"registrar": f"sip:127.0.0.1:{free_port()}", "register": False, "username": "vg",
                                 "password_env": "VG_TEST_SEC_TRUNK_PW", "allowed": [r"\+4930\d+"],
                                 "max_calls_per_min": 1},
                     "carrier": {"registrar": f"sip:127.0.0.1:{registrar.port}", "username": "vgsec",
                                 "password_env": "VG_TEST_SEC_TRUNK_PW", "realm": REALM}}
    g = start_gateway(yaml.safe_dump(cfg), tmp_path_factory.mktemp("gw-security"), port)
    yield g
    assert g.stop() == 0, "\n".join(g.lines[-20:])


def test_a_source_in_sip_allow_calls_without_credentials(gw: Gateway, workdir: Path):
    (workdir / "s.xml").write_text(call_with_headers([]))
    r = sipp(["-sf", "s.xml", "-s", "echo", "-mp", str(rtp_range(10)[0]), f"127.0.0.1:{gw.port}"], workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    inc = next(e for e in gw.events("call_incoming") if e["source"].startswith("127.0.0.1:"))
    assert not inc["authenticated"] and gw.wait_event("call_end", 10, call=inc["call"])["agent"] == "echo"


def test_a_source_outside_sip_allow_without_credentials_is_refused(gw: Gateway, workdir: Path):
    (workdir / "s.xml").write_text(call_with_headers([], expect=401))
    r = sipp(["-sf", "s.xml", "-s", "echo", "-i", "127.0.0.2", f"127.0.0.1:{gw.port}"], workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ev = gw.wait_event("call_refused", 5, code=401, reason="127.0.0.2 sent no credentials (sip.users)")
    assert ev["source"].startswith("127.0.0.2:")


@pytest.mark.parametrize(("password", "expect"), [(PASSWORD, 200), ("guessed", 403)])
def test_a_user_outside_sip_allow_is_admitted_by_digest_credentials(gw: Gateway, workdir: Path, password: str,
                                                                     expect: int):
    (workdir / "auth.xml").write_text(authenticated_call(expect))
    r = sipp(["-sf", "auth.xml", "-s", "echo", "-i", "127.0.0.2", "-au", "alice", "-ap", password,
              "-auth_uri", f"echo@127.0.0.1:{gw.port}", "-mp", str(rtp_range(10)[0]), f"127.0.0.1:{gw.port}",
              "-trace_msg", "-message_file", "m.log"], workdir)
    assert r.returncode == 0, (workdir / "m.log").read_text()[-3000:]
    if expect == 200:
        inc = gw.wait_event("call_incoming", 5, authenticated=True, user="alice")
        assert inc["source"].startswith("127.0.0.2:")
        assert gw.wait_event("call_end", 10, call=inc["call"])["agent"] == "echo"
    else:
        ev = gw.wait_event("call_refused", 5, code=403)
        assert ev["reason"] == "127.0.0.2 failed digest authentication as user alice: wrong password"


FLOOD = f"""{invite(PCMU)}  <recv response="401" optional="true" next="ack"/>
  <recv response="503">
    <action><ereg regexp="Retry-After: [0-9]+" search_in="msg" check_it="true" assign_to="ra"/></action>
  </recv>
  <label id="ack"/>
{ack(503)}  <Reference variables="ra"/>
"""


def test_a_flooding_source_gets_503_and_others_still_call(gw: Gateway, workdir: Path):
    """20 INVITEs from 127.0.0.3 within the 2 s window: the first 8 are handled (401: outside sip.allow), the other
    12 get 503 with Retry-After at once; a caller at another address still gets through."""
    before = len(gw.events("call_refused"))
    (workdir / "flood.xml").write_text(scenario(FLOOD))
    r = subprocess.run(["sipp", "-nostdin", "-sf", "flood.xml", "-s", "echo", "-i", "127.0.0.3", "-m", "20", "-l",
                        "20", "-r", "200", f"127.0.0.1:{gw.port}"], capture_output=True, text=True, timeout=60,
                       cwd=workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    codes = [e["code"] for e in gw.events("call_refused")[before:] if e.get("source", "").startswith("127.0.0.3:")]
    assert codes == [401] * 8 + [503] * 12, codes
    (workdir / "ok.xml").write_text(call_with_headers([]))
    r = sipp(["-sf", "ok.xml", "-s", "echo", "-mp", str(rtp_range(10)[0]), f"127.0.0.1:{gw.port}"], workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_an_invite_over_max_message_bytes_gets_513(gw: Gateway, workdir: Path):
    (workdir / "big.xml").write_text(call_with_headers([f"X-Pad: {'a' * 3000}"], expect=513))
    r = sipp(["-sf", "big.xml", "-s", "echo", f"127.0.0.1:{gw.port}"], workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    refused = gw.wait_event("call_refused", 5, code=513)
    assert re.fullmatch(r"the INVITE is \d+ bytes, over the limit of 2048", refused["reason"]), refused


def test_a_transfer_its_route_does_not_allow_is_refused_and_the_fallback_spoken(gw: Gateway, workdir: Path):
    # no REFER may reach the caller: sipp fails on any request but the BYE that ends the call
    (workdir / "s.xml").write_text(scenario(f'{invite(PCMU)}  <recv response="200" rrs="true"/>\n{ack(200)}'
                                            f'{BYE_RECEIVED}'))
    r = sipp(["-sf", "s.xml", "-s", "fraud", "-mp", str(rtp_range(10)[0]), f"127.0.0.1:{gw.port}"], workdir,
             timeout=30)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    refused = gw.wait_event("transfer_refused", 5, target=FRAUD_TARGET)
    why = "sip:+882100123@127.0.0.1:9 matches no transfer_allowed pattern of the call's route"
    assert refused["reason"] == why
    said = [e["text"] for e in gw.events("agent_say") if e.get("call") == refused["call"]]
    assert said == ["Sorry, that number is not allowed."]
    assert not [e for e in gw.events("agent_transfer") if e.get("call") == refused["call"]]
    end = gw.wait_event("call_end", 10, call=refused["call"])
    assert end["reason"] == "transfer_refused"
    assert end["transfers_refused"] == [{"target": FRAUD_TARGET, "reason": why}]
    db = Path(gw.config).parent / "records" / "calls.db"
    with sqlite3.connect(db) as con:
        row = con.execute("select record from calls where call = ?", (refused["call"],)).fetchone()
    assert json.loads(row[0])["transfers_refused"] == end["transfers_refused"]


def test_no_secret_reaches_the_log_the_sip_trace_the_records_or_the_cli(gw: Gateway, registrar: Kamailio,
                                                                        rt: RealtimeServer, workdir: Path):
    """Every secret is used (the trunk registers with its password, alice authenticates, the control endpoint
    checks its token, the S2S agent sends its key), then looked for in everything the gateway wrote or printed."""
    gw.wait_event("trunk_state", 15, trunk="carrier", state="registered")
    assert any("registered vgsec" in ln for ln in registrar.lines)
    (workdir / "auth.xml").write_text(authenticated_call(200))
    r = sipp(["-sf", "auth.xml", "-s", "echo", "-i", "127.0.0.2", "-au", "alice", "-ap", PASSWORD, "-auth_uri",
              f"echo@127.0.0.1:{gw.port}", "-mp", str(rtp_range(10)[0]), f"127.0.0.1:{gw.port}"], workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rt.reset()
    (workdir / "s2s.xml").write_text(call_with_headers([]))
    r = sipp(["-sf", "s2s.xml", "-s", "s2s", "-mp", str(rtp_range(10)[0]), f"127.0.0.1:{gw.port}"], workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert rt.headers and rt.headers[0]["authorization"] == f"Bearer {S2S_KEY}", rt.headers
    control = yaml.safe_load(gw.config.read_text())["control"]
    bad = httpx.post(f"http://127.0.0.1:{control['port']}/calls", json={"number": ""}, timeout=15,
                     headers={"Authorization": f"Bearer {CONTROL_TOKEN}"})
    assert bad.status_code == 400, bad.text  # past the token check
    for e in gw.events("call_incoming")[-2:]:
        gw.wait_event("call_end", 10, call=e["call"])
    cli = [subprocess.run([str(VENV_BIN / "voicegate"), *cmd, str(gw.config)], capture_output=True, text=True,
                          timeout=60) for cmd in (["check"], ["trunks", "--config"])]
    assert [c.returncode for c in cli] == [0, 0], [c.stderr for c in cli]
    assert "carrier" in cli[1].stdout, cli[1].stdout
    records = gw.config.parent / "records"
    traces = sorted((records / "sip").glob("*.sip"))
    assert len(traces) >= 2
    written: dict[str, str] = {
        "gateway log": "\n".join(gw.lines),
        **{f"voicegate {c.args[1]}": c.stdout + c.stderr for c in cli},
        "call records": json.dumps(read_records(records / "calls.db")[0]),
        **{str(f.relative_to(records)): f.read_bytes().decode("latin-1") for f in records.rglob("*") if f.is_file()},
    }
    assert "Authorization: Digest" in "".join(written[str(t.relative_to(records))] for t in traces)
    assert '"user":"alice"' in written["gateway log"] and "calls.db" in written  # the search sees what was written
    for secret in (PASSWORD, CONTROL_TOKEN, TRUNK_PASSWORD, S2S_KEY):
        assert not [where for where, text in written.items() if secret in text], secret


def test_a_trunk_places_at_most_max_calls_per_min(gw: Gateway):
    control = yaml.safe_load(gw.config.read_text())["control"]

    def dial(number: str) -> httpx.Response:  # what `voicegate dial` sends
        return httpx.post(f"http://127.0.0.1:{control['port']}/calls", timeout=15,
                          json={"number": number, "agent": "echo", "ring_s": 1},
                          headers={"Authorization": f"Bearer {CONTROL_TOKEN}"})

    first = dial("+4930555000")  # nobody answers at the trunk's address: it is cancelled after a second
    assert first.status_code == 201, first.text
    second = dial("+4930555001")
    assert second.status_code == 429 and "trunks.limited.max_calls_per_min" in second.json()["error"], second.text
    assert gw.wait_event("dial_refused", 5, number="+4930555001")["status"] == 429
    assert [e["number"] for e in gw.events("call_outgoing")] == ["+4930555000"]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_malformed_rtp_leaves_the_call_and_another_one_echoing(gw: Gateway, workdir: Path):
    fuzzed, other = RtpPeer(), RtpPeer()
    calls = []
    try:
        for name, peer in (("fuzzed", fuzzed), ("other", other)):
            calls.append(media_call(gw, workdir, name, peer, hold_ms=9000))
            peer.start(("127.0.0.1", answer_port(workdir / f"{name}.port")))
        t0 = time.monotonic()
        assert fuzzed.wait_echo(t0, 8) and other.wait_echo(t0, 8), "no echo before the fuzzing"
        rtp_port = fuzzed.remote[1]  # type: ignore[index]
        sent = blast("127.0.0.1", rtp_port, 2000, 1000.0, seed=7, ssrc=fuzzed.ssrc, own=fuzzed.sock)
        assert sent >= 1900  # only 65000-byte packets may not fit the socket
        after = time.monotonic()
        cpu0 = _cpu_s(gw.proc.pid)
        assert fuzzed.wait_echo(after + 0.2, 4), "the fuzzed call stopped echoing"  # +0.2: the jitter buffer's
        assert other.wait_echo(after + 0.2, 4), "the other call stopped echoing"
        time.sleep(max(0.0, after + 1.0 - time.monotonic()))
        busy = (_cpu_s(gw.proc.pid) - cpu0) / (time.monotonic() - after)
        assert busy < 0.5, f"the gateway used {busy:.0%} of a core with two echo calls after the fuzzing"
        for p in calls:
            out, err = p.communicate(timeout=20)
            assert p.returncode == 0, out[-2000:] + err[-2000:]
    finally:
        for p in calls:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        fuzzed.close()
        other.close()
    assert gw.proc.poll() is None
    ids = [f"1-{p.pid}@127.0.0.1" for p in calls]  # sipp's Call-ID: [call_number]-[pid]@[local_ip]
    ends = [gw.wait_event("call_end", 10, call=i) for i in ids]
    assert all(e["agent"] == "echo" and e["reason"] == "remote_200" for e in ends), ends
    fuzzed_rx, other_rx = (gw.wait_event("call_rtp", 1, call=i)["rx_pkts"] for i in ids)
    assert fuzzed_rx > other_rx + 300, (fuzzed_rx, other_rx)  # the fuzzed call's stream did take fuzz packets
