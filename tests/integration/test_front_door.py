"""The Kamailio front door of `voicegate serve --workers 2` does at the edge what a single gateway does: the
`sip.allow` source ACL, `sip.users` digest credentials answered to whichever worker gets the retry, TLS, a
public address in every worker's SDP, one registration of a trunk; a worker believes the caller's address the front
door names only when the front door sends it, also on another machine (two network namespaces)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.cluster import cluster_config, free_block, start_cluster, stop_all, wait_answered
from tests.integration.kamailio import REALM, Kamailio
from tests.integration.netns import BACK_IP, FRONT_IP, need_lab, two_hosts
from tests.integration.peers import Gateway, call, free_port, rtp_range, sipp, spawn_gateway, start_gateway
from tests.integration.test_tls import issue, make_ca
from tests.integration.test_trunks import authenticated_call, call_with_headers

PASSWORD = "bob-cluster-s3cret"
TRUNK_PASSWORD = "door-trunk-s3cret"
TRUNK_USER = "vgdoor"
PROXIED_USER = "vgproxied"
TLS_USER = "vgtls"
TLS_DID = "+4930777"
TRUNK_CN = "vgtls trunk"
DID = "+4930555"
PUBLIC = "127.0.0.3"


def _cluster(tmp: Path, sip: dict[str, object], **overrides: object) -> Gateway:
    port, first = free_port(), free_block(2)
    cfg = yaml.safe_load(cluster_config(port, {"count": 2, "first_port": first, "probe_interval_s": 1}, **overrides))
    cfg["sip"].update(sip)
    gw = start_cluster(yaml.safe_dump(cfg), tmp, port, 2)
    gw.first_port = first  # type: ignore[attr-defined]
    return gw


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate for 127.0.0.1 it signed: (ca, cert, key)."""
    return make_ca(tmp_path_factory.mktemp("door-pki"), "door")


@pytest.fixture(scope="module")
def trunk_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The certificate the TLS carrier issued for the trunk, which it requires as client certificate, from its own
    CA (not the front door's): (carrier ca, cert, key)."""
    d = tmp_path_factory.mktemp("door-trunk-pki")
    ca = make_ca(d, "carrier")[0]
    return (ca, *issue(d, "carrier", "trunk", TRUNK_CN, "DNS:vgtls.voicegate.test"))


@pytest.fixture(scope="module")
def tls_carrier(pki: tuple[Path, Path, Path], trunk_cert: tuple[Path, Path, Path],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    k = Kamailio(free_port(), tmp_path_factory.mktemp("door-tls-carrier"), TRUNK_PASSWORD, TLS_USER,
                 tls_port=free_port(), pki=pki, client_ca=trunk_cert[0])
    k.start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def digest(pki: tuple[Path, Path, Path], trunk_cert: tuple[Path, Path, Path], tls_carrier: Kamailio,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """allow 127.0.0.1 and a user: other sources get through the front door to a worker's challenge; SIP over
    mutual TLS ends at the front door; a trunk registers over TLS with `tls_carrier`, with its own certificate."""
    os.environ.update(VG_TEST_BOB_PW=PASSWORD, VG_TEST_DOOR_TRUNK_PW=TRUNK_PASSWORD)
    ca, cert, key = pki
    tls = {"port": free_port(), "cert_file": str(cert), "key_file": str(key), "ca_file": str(ca),
           "require_client_cert": True}
    trunk = {"registrar": f"sip:127.0.0.1:{tls_carrier.tls_port}", "transport": "tls", "username": TLS_USER,
             "realm": REALM, "password_env": "VG_TEST_DOOR_TRUNK_PW", "expiry_s": 30,
             "routes": [{"match": TLS_DID, "agent": "echo"}],
             "tls": {"cert_file": str(trunk_cert[1]), "key_file": str(trunk_cert[2]), "ca_file": str(ca)}}
    gw = _cluster(tmp_path_factory.mktemp("door-digest"),
                  {"allow": ["127.0.0.1/32"], "users": {"bob": {"password_env": "VG_TEST_BOB_PW"}},
                   "transports": ["udp", "tls"], "tls": tls}, trunks={"secure": trunk})
    gw.tls_port = tls["port"]  # type: ignore[attr-defined]
    yield gw
    assert gw.stop(40) == 0, "\n".join(gw.lines[-20:])


@pytest.fixture(scope="module")
def carrier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    k = Kamailio(free_port(), tmp_path_factory.mktemp("door-carrier"), TRUNK_PASSWORD, TRUNK_USER)
    k.start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def acl(carrier: Kamailio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """allow 127.0.0.1 only: the front door refuses other sources itself; a trunk registers with `carrier` and
    pings it, another registers through `carrier` as its outbound proxy; the public address is another loopback
    address the front door also listens on."""
    os.environ["VG_TEST_DOOR_TRUNK_PW"] = TRUNK_PASSWORD
    trunk = {"registrar": f"sip:127.0.0.1:{carrier.port}", "username": TRUNK_USER, "realm": REALM,
             "password_env": "VG_TEST_DOOR_TRUNK_PW", "expiry_s": 30, "keepalive_s": 1,
             "routes": [{"match": DID, "agent": "echo"}]}
    proxied = {"registrar": "sip:127.0.0.4:9", "outbound_proxy": f"sip:127.0.0.1:{carrier.port}",  # nothing at :9
               "username": PROXIED_USER, "realm": REALM, "password_env": "VG_TEST_DOOR_TRUNK_PW", "expiry_s": 30}
    gw = _cluster(tmp_path_factory.mktemp("door-acl"), {"allow": ["127.0.0.1/32"], "listen": "0.0.0.0",
                                                       "public_address": PUBLIC},
                  trunks={"carrier": trunk, "proxied": proxied})
    yield gw
    assert gw.stop(40) == 0, "\n".join(gw.lines[-20:])


def test_digest_retry_is_answered_by_the_other_worker(digest: Gateway, workdir: Path):
    (workdir / "auth.xml").write_text(authenticated_call(200))
    r = sipp(["-sf", "auth.xml", "-s", "echo", "-i", "127.0.0.2", "-au", "bob", "-ap", PASSWORD,
              "-auth_uri", f"echo@127.0.0.1:{digest.port}", "-mp", str(rtp_range(10)[0]),
              f"127.0.0.1:{digest.port}", "-trace_msg", "-message_file", "m.log"], workdir)
    assert r.returncode == 0, (workdir / "m.log").read_text()[-3000:]
    challenged = digest.wait_event("call_refused", 5, code=401)
    assert challenged["reason"] == "127.0.0.2 sent no credentials (sip.users)"
    inc = digest.wait_event("call_incoming", 5, authenticated=True, user="bob")
    assert inc["source"].startswith("127.0.0.2:") and "X-VG-Source" not in inc["sip_headers"]
    assert inc["worker"] != challenged["worker"], "round robin sent the retry to the same worker"
    assert digest.wait_event("call_end", 10, call=inc["call"])["agent"] == "echo"


def test_an_allowed_source_calls_through_the_digest_cluster_without_credentials(digest: Gateway, workdir: Path):
    (workdir / "s.xml").write_text(call_with_headers([]))
    me = free_port()
    r = sipp(["-sf", "s.xml", "-s", "echo", "-p", str(me), "-mp", str(rtp_range(10)[0]), f"127.0.0.1:{digest.port}"],
             workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    inc = digest.wait_event("call_incoming", 5, authenticated=False, source=f"127.0.0.1:{me}")
    assert digest.wait_event("call_end", 10, call=inc["call"])["agent"] == "echo"


def test_a_call_over_mutual_tls_ends_at_the_front_door_and_reaches_a_worker_over_udp(digest: Gateway,
                                                                                      pki: tuple[Path, Path, Path]):
    ca, cert, key = pki
    port = digest.tls_port  # type: ignore[attr-defined]
    before = len(digest.events("call_incoming"))
    res = call(f"sip:echo@127.0.0.1:{port};transport=tls", "--tls-ca", str(ca), "--tls-cert", str(cert),
               "--tls-key", str(key), "--duration", "2")
    assert res["status"] == 200 and res["answered"], res
    inc = digest.events("call_incoming")[before]
    assert inc["source"].startswith("127.0.0.1:") and not inc["authenticated"]
    end = digest.wait_event("call_end", 10, call=inc["call"])
    assert end["agent"] == "echo" and end["frames_in"] > 50, end  # the caller's audio reached the worker
    refused = call(f"sip:echo@127.0.0.1:{port};transport=tls", "--tls-ca", str(ca), "--duration", "1")
    assert not refused["answered"], refused  # no client certificate: the front door's handshake fails


def test_a_trunk_registers_over_tls_from_the_front_door_and_its_calls_come_back_over_tls(
        digest: Gateway, tls_carrier: Kamailio):
    """Worker 0's REGISTER goes to the front door over UDP and on to the carrier over TLS, with the front door's
    TLS address as Contact and the trunk's own client certificate (`trunks.secure.tls`), which the carrier requires
    signed by its CA; the carrier's call to it comes over TLS (with the carrier's client certificate)."""
    assert digest.wait_event("trunk_state", 15, trunk="secure", state="registered")["worker"] == 0
    (client,) = tls_carrier.wait_log(f"tls-client {TLS_USER}")
    assert client.endswith(f"cn={TRUNK_CN}"), client
    (registered,) = tls_carrier.wait_log(f"registered {TLS_USER}")
    contact = f"contact=<sip:{TLS_USER}@127.0.0.1:{digest.tls_port};transport=tls>"  # type: ignore[attr-defined]
    assert contact in registered and " proto=tls src=127.0.0.1:" in registered, registered
    before = len(digest.events("call_incoming"))
    res = call(f"sip:{TLS_DID}@127.0.0.1:{tls_carrier.port}", "--duration", "1")
    assert res["status"] == 200 and res["answered"], res
    inc = digest.events("call_incoming")[before]
    assert (inc["trunk"], inc["called"]) == ("secure", TLS_DID), inc
    assert digest.wait_event("call_end", 10, call=inc["call"])["agent"] == "echo"


def test_the_front_door_refuses_a_source_outside_sip_allow_with_403(acl: Gateway, workdir: Path):
    (workdir / "s.xml").write_text(call_with_headers([], expect=403))
    r = sipp(["-sf", "s.xml", "-s", "echo", "-i", "127.0.0.2", f"127.0.0.1:{acl.port}",
              "-trace_msg", "-message_file", "m.log"], workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    log = (workdir / "m.log").read_text()
    assert "SIP/2.0 403 Forbidden" in log and "allow" not in log.split("SIP/2.0 403", 1)[1].split("\n\n")[0]
    deadline = time.monotonic() + 10  # Kamailio's log line reaches the supervisor's log after sipp had its 403
    while not any(str(e["msg"]).startswith("refused ") and str(e["msg"]).endswith("from 127.0.0.2: not in sip.allow")
                  for e in acl.events("frontdoor")):
        assert time.monotonic() < deadline, [e["msg"] for e in acl.events("frontdoor")]
        time.sleep(0.05)
    assert not [e for e in acl.events("call_incoming") if e["source"].startswith("127.0.0.2")], "a worker got it"


def test_an_allowed_source_calls_and_sees_the_public_address_in_sdp_contact_and_record_route(acl: Gateway,
                                                                                             workdir: Path):
    (workdir / "s.xml").write_text(call_with_headers([]))
    r = sipp(["-sf", "s.xml", "-s", "echo", "-mp", str(rtp_range(10)[0]), f"127.0.0.1:{acl.port}",
              "-trace_msg", "-message_file", "m.log"], workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ok = (workdir / "m.log").read_text().split("SIP/2.0 200 OK", 1)[1].split("----------", 1)[0]
    assert f"c=IN IP4 {PUBLIC}" in ok and "127.0.0.1" not in ok.split("\n\n", 1)[1], ok
    assert f"Contact: <sip:voicegate@{PUBLIC}:{acl.port};vgw=" in ok, ok
    assert f"Record-Route: <sip:{PUBLIC}:{acl.port};lr>" in ok, ok
    inc = acl.wait_event("call_incoming", 5)
    assert inc["source"].startswith("127.0.0.1:")
    assert acl.wait_event("call_end", 10, call=inc["call"])["agent"] == "echo"


def test_a_gateway_refuses_a_source_outside_sip_allow_and_a_forged_source_header(acl: Gateway, workdir: Path):
    """A worker is the single gateway with the file's `sip.allow`: called straight from 127.0.0.2, it refuses with
    403 itself, and believes no X-VG-Source header from an address that is not the front door's."""
    before = len(acl.events("call_refused"))
    (workdir / "s.xml").write_text(call_with_headers(["X-VG-Source: 127.0.0.1:5060"], expect=403))
    first = acl.first_port  # type: ignore[attr-defined]
    r = sipp(["-sf", "s.xml", "-s", "echo", "-i", "127.0.0.2", f"127.0.0.1:{first}"], workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    refused = acl.wait_event("call_refused", 5, code=403)
    assert refused["reason"] == "127.0.0.2 is not in sip.allow" and refused["worker"] == 0
    assert len(acl.events("call_refused")) == before + 1


def test_a_registering_trunk_registers_once_with_the_front_doors_contact_and_its_calls_reach_both_workers(
        acl: Gateway, carrier: Kamailio):
    ok = acl.wait_event("trunk_state", 15, trunk="carrier", state="registered")
    assert ok["worker"] == 0
    contact = f"contact=<sip:{TRUNK_USER}@{PUBLIC}:{acl.port}>"
    carrier.wait_log(f"registered {TRUNK_USER}")
    time.sleep(1)  # any second REGISTER would come at once, rewritten by pjsua from the Via the registrar saw
    registered = carrier.log(f"registered {TRUNK_USER}")
    assert len(registered) == 1 and contact in registered[0], registered
    assert not [e for e in acl.events("trunk_state") if e["worker"] != 0 and e["state"] != "unregistered"]
    workers = set()
    for _ in range(2):
        before = len(acl.events("call_incoming"))
        res = call(f"sip:{DID}@127.0.0.1:{carrier.port}", "--duration", "1")
        assert res["status"] == 200 and res["answered"], res
        inc = acl.events("call_incoming")[before]
        assert (inc["trunk"], inc["called"]) == ("carrier", DID) and inc["source"] == f"127.0.0.1:{carrier.port}"
        assert acl.wait_event("call_end", 10, call=inc["call"])["agent"] == "echo"
        workers.add(inc["worker"])
    assert workers == {0, 1}


def test_the_carrier_sees_registrations_through_its_proxy_and_keepalives_from_the_front_door_alone(
        acl: Gateway, carrier: Kamailio):
    """Everything a worker starts goes out through the front door (`sip.outbound_proxy`): REGISTER (also on to a
    trunk's own outbound proxy, here the carrier itself, whose registrar address has nothing listening) and
    OPTIONS keepalives, which worker 0 alone sends."""
    src = f"src=127.0.0.1:{acl.port}"
    assert acl.wait_event("trunk_state", 15, trunk="proxied", state="registered")["worker"] == 0
    (proxied,) = carrier.wait_log(f"registered {PROXIED_USER}")
    assert f"contact=<sip:{PROXIED_USER}@{PUBLIC}:{acl.port}>" in proxied and proxied.endswith(src), proxied
    pings = carrier.wait_log(f"options from {TRUNK_USER}", 10, count=3)
    assert all(p.endswith(src) for p in pings), pings
    assert acl.wait_event("trunk_keepalive", 5, trunk="carrier", state="up")["worker"] == 0
    assert not [e for e in acl.events("trunk_keepalive") if e["worker"] != 0]
    assert all(line.endswith(src) for line in carrier.log("registered")), carrier.log("registered")


def test_a_reload_gives_the_front_doors_acl_a_new_trunks_address(acl: Gateway, workdir: Path):
    """SIGHUP to the supervisor: a trunk added to the file lets its address through the front door's `sip.allow`
    ACL (refused with 403 before, by the test above) and each worker routes its calls."""
    cfg = yaml.safe_load(acl.config.read_text())
    cfg["trunks"]["pbx"] = {"registrar": "sip:127.0.0.2:9", "register": False, "username": "pbx",
                            "password_env": "VG_TEST_DOOR_TRUNK_PW", "routes": [{"match": "pbx", "agent": "echo"}]}
    acl.config.write_text(yaml.safe_dump(cfg))
    signalled = time.time()
    acl.proc.send_signal(signal.SIGHUP)
    forwarded = acl.wait_event("config_reload_forwarded", 10)
    assert forwarded["front_door_acl_reloaded"] and forwarded["workers"] == [0, 1], forwarded
    deadline = time.monotonic() + 15
    while len([e for e in acl.events("config_reloaded") if e["ts"] >= signalled]) < 2:
        assert time.monotonic() < deadline, "\n".join(acl.lines[-20:])
        time.sleep(0.05)
    before = len(acl.events("call_incoming"))
    (workdir / "s.xml").write_text(call_with_headers([]))
    r = sipp(["-sf", "s.xml", "-s", "pbx", "-i", "127.0.0.2", "-mp", str(rtp_range(10)[0]),
              f"127.0.0.1:{acl.port}"], workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    inc = acl.events("call_incoming")[before]
    assert inc["trunk"] == "pbx" and inc["source"].startswith("127.0.0.2:"), inc
    assert acl.wait_event("call_end", 10, call=inc["call"])["agent"] == "echo"


def test_a_call_to_the_public_contact_keeps_its_in_dialog_requests_across_a_front_door_restart(acl: Gateway):
    result: dict[str, Any] = {}
    before = len(acl.events("call_answered"))
    t = threading.Thread(target=lambda: result.update(call(f"sip:echo@127.0.0.1:{acl.port}", "--duration", "5")))
    t.start()
    (answered,) = wait_answered(acl, before, 1, 20)
    kamailio = int(acl.events("frontdoor_started")[-1]["pid"])
    killed = time.time()
    os.killpg(kamailio, signal.SIGKILL)
    acl.wait_event("frontdoor_exited", 5, pid=kamailio)
    t.join(40)
    assert [e for e in acl.events("frontdoor_ready") if e["ts"] >= killed], "the front door did not come back"
    assert result["answered"] and not result["remote_hangup"], result
    end = acl.wait_event("call_end", 10, call=answered["call"])  # the caller's BYE, to the front door's Contact
    assert end["reason"] == "remote_200", end


def test_a_worker_on_another_machine_takes_calls_and_believes_the_front_doors_caller_address(tmp_path: Path):
    """Two network namespaces as two machines: the front door with one local worker in one, a plain gateway listed
    in `workers.remote` in the other; a caller it allows only by the address the front door names."""
    need_lab()
    sip = {"port": 5060, "transports": ["udp"], "allow": ["127.0.0.1/32"]}
    back_cfg = yaml.safe_load(cluster_config(5060, {"when_full": {"reply": 486}}))
    back_cfg["sip"] = {**sip, "listen": BACK_IP, "front_door": [FRONT_IP]}
    front_cfg = yaml.safe_load(cluster_config(5060, {"count": 1, "first_port": 5070, "probe_interval_s": 1,
                                                     "remote": [f"sip:{BACK_IP}:5060"]}))
    front_cfg["sip"] = {**sip, "listen": FRONT_IP}
    (tmp_path / "front").mkdir()
    (tmp_path / "back").mkdir()
    (tmp_path / "s.xml").write_text(call_with_headers([]))
    with two_hosts() as hosts:
        back = start_gateway(yaml.safe_dump(back_cfg), tmp_path / "back", 5060, prefix=hosts.cmd(hosts.back, []))
        front = spawn_gateway(yaml.safe_dump(front_cfg), tmp_path / "front", 5060, "--workers", "1",
                              prefix=hosts.cmd(hosts.front, []))
        try:
            front.wait_event("frontdoor_ready", 60)
            for _ in range(2):  # round robin: the local worker, then the one elsewhere (or the other way round)
                r = subprocess.run(hosts.cmd(hosts.front, [
                    "sipp", "-nostdin", "-sf", "s.xml", "-s", "echo", "-i", "127.0.0.1", "-p", "5099", "-m", "1",
                    "-timeout", "20s", f"{FRONT_IP}:5060"]), capture_output=True, text=True, timeout=30, cwd=tmp_path)
                assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
            inc = back.wait_event("call_incoming", 5)
            assert inc["source"] == "127.0.0.1:5099", inc  # not FRONT_IP: the front door named the caller
            assert back.wait_event("call_end", 10, call=inc["call"])["agent"] == "echo"
            assert front.wait_event("call_end", 10)["worker"] == 0
        finally:
            stop_all(front, back)
