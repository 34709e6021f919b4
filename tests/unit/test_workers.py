"""Workers: the config section, what each worker is given, restart backoff, the admission policy, and the Kamailio
front door config (checked by the real `kamailio -c`)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from telephony.admission import Reply, decide, dialog_ids
from telephony.config import ConfigError, parse_config
from telephony.control import ask_worker
from telephony.frontdoor import FrontDoor, address_list, dispatcher_list, kamailio_config, tls_config
from telephony.frontdoor_rpc import Dialog, answered
from telephony.workers import Restarts, control_peers, rtp_slice, worker_config
from tests.integration.test_tls import make_ca

BASE = """\
sip: {listen: 127.0.0.1, port: 5060}
rtp: {port_min: 20000, port_max: 20099}
agents:
  e: {type: echo}
routes:
  - {match: "*", agent: e}
"""


def test_workers_shorthand_and_mapping():
    assert parse_config(BASE + "workers: 3\n").workers.count == 3
    cfg = parse_config(BASE + "workers:\n  count: 2\n  when_full: {reply: 480}\n  dispatch: least_loaded\n")
    assert (cfg.workers.count, cfg.workers.when_full.reply, cfg.workers.dispatch) == (2, 480, "least_loaded")


@pytest.mark.parametrize(("extra", "line", "words"), [
    ("workers:\n  when_full: {reply: announcement, voice: klingonx}\n", 8, "klingonx"),
    ("workers:\n  when_full: {reply: 404}\n", 8, "503"),
    ("workers: {count: 2, first_port: 5059}\n", 7, "include sip.port 5060"),
    ("workers: 20\n", 7, "gives each of 20 workers 5 ports"),
    ("workers: 0\n", 7, "greater than or equal to 1"),
])
def test_bad_workers_config_is_named_with_its_line(extra: str, line: int, words: str):
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + extra, "vg.yaml")
    issue = e.value.issues[0]
    assert issue.file == "vg.yaml" and issue.line == line and issue.field.startswith("workers"), issue
    assert words in issue.message, issue


def test_a_trunk_registers_over_tls_through_a_front_door_that_speaks_tls(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path):
    monkeypatch.setenv("VG_X", "pw")
    tls = TRUNK.replace("transport: tcp", "transport: tls")
    with pytest.raises(ConfigError, match=r"trunks.c.transport: tls is not in sip.transports"):  # nor the front door's
        parse_config(BASE + tls + "workers: 2\n")
    sip = "port: 5060, transports: [udp, tls], tls: {port: 5071, cert_file: %s, key_file: %s}}"
    cfg = parse_config(BASE.replace("port: 5060}", sip % make_ca(tmp_path, "t")[1:]) + tls
                       + "workers: {count: 2, first_port: 6000}\n")
    assert worker_config(cfg, 0, 2).trunks["c"].contact == "sip:vg@127.0.0.1:5071;transport=tls"


def test_rtp_slices_are_disjoint_and_cover_equal_parts():
    rtp = parse_config(BASE).rtp
    slices = [rtp_slice(rtp, i, 3) for i in range(3)]
    assert slices == [(20000, 20032), (20033, 20065), (20066, 20098)]


def test_worker_config_moves_each_worker_to_loopback_and_its_slice():
    cfg = parse_config(BASE + "workers: {count: 2, first_port: 6000, when_full: {reply: 480}}\n")
    assert worker_config(cfg, 0, 1) is cfg  # one worker: the gateway as configured
    w1 = worker_config(cfg, 1, 2)
    assert (w1.sip.listen, w1.sip.port, w1.sip.transports) == ("127.0.0.1", 6001, ["udp"])
    assert (w1.rtp.port_min, w1.rtp.port_max) == (20050, 20099)
    assert w1.workers.when_full.reply == 486  # the front door fails over on 486 and sends the configured reply


def test_restart_backoff_doubles_while_dying_and_resets_after_a_healthy_run():
    r = Restarts(0.5, 4.0, healthy_s=30)
    assert [r.exited(0.0, 1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert r.exited(0.0, 31.0) == 0.5


def test_admission_policy():
    assert decide("INVITE", 3, 4, False, 480, 30) is None
    assert decide("INVITE", 4, 4, False, 480, 30) == Reply(480, "full")
    assert decide("INVITE", 4, 4, False, 503, 30) == Reply(503, "full", {"Retry-After": "30"})
    assert decide("INVITE", 0, 4, True, 486, 9) == Reply(503, "draining", {"Retry-After": "9"})
    assert decide("OPTIONS", 0, 4, False, 486, 9) is None
    assert decide("OPTIONS", 4, 4, True, 486, 9) == Reply(503, "draining", {"Retry-After": "9"})
    assert decide("MESSAGE", 4, 4, True, 486, 9) is None


@pytest.mark.parametrize("dispatch", ["round_robin", "least_loaded"])
@pytest.mark.parametrize("reply", [503, 486, 480, "announcement"])
def test_kamailio_accepts_the_front_door_config(tmp_path: Path, dispatch: str, reply: int | str):
    cfg = parse_config(BASE + f"workers: {{count: 3, dispatch: {dispatch}, when_full: {{reply: {reply}}}}}\n")
    lst = tmp_path / "dispatcher.list"
    lst.write_text(dispatcher_list(cfg, 3))
    assert lst.read_text().splitlines()[2] == "1 sip:127.0.0.1:5072 0 0 duid=w2;maxload=4"
    path = tmp_path / "kamailio.cfg"
    text = kamailio_config(cfg, lst)
    path.write_text(text)
    check = subprocess.run(["/usr/sbin/kamailio", "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-2000:]
    refusal = 'ds_select_dst("2", "4")' if reply == "announcement" else f'sl_send_reply("{reply}"'
    assert refusal in text and ("Retry-After: 30" in text) == (reply == 503)
    assert ('ds_select_dst("1", "10")' in text) == (dispatch == "least_loaded")
    assert ('"ds_hash_expire", 3660' in text) == (dispatch == "least_loaded")  # timeouts.max_call_s 3600 + 60
    assert ("event_route[tm:local-request]" in text) == (dispatch == "least_loaded")  # dlg.end_dlg's BYEs unload


def test_the_answered_calls_of_a_dlg_profile_list():
    """Kamailio 5.6's `dlg.profile_list` result (JSON-RPC, trimmed): only confirmed dialogs (state 3, 4) count."""
    def dlg(call: str, state: int) -> dict[str, object]:
        return {"h_entry": 1702, "h_id": 6751, "ref": 2, "call-id": call, "state": state,
                "caller": {"tag": "31937SIPpTag002"}, "profiles": [{"worker": "sip:127.0.0.1:40311"}]}
    assert answered([dlg("a@h", 4), dlg("b@h", 1), dlg("c@h", 3)]) == [Dialog("a@h", 1702, 6751),
                                                                       Dialog("c@h", 1702, 6751)]
    assert answered(None) == answered([]) == []


def test_dialog_ids_of_our_2xx():
    ok = ("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bK1\r\ni: abc@host\r\n"
          "From: \"a\" <sip:a@h>;tag=remote1\r\nTo: <sip:b@h>;TAG=local2;x=1\r\nCSeq: 1 INVITE\r\n\r\nv=0")
    assert dialog_ids(ok) == ("abc@host", "local2", "remote1")
    assert dialog_ids(ok.replace(";TAG=local2", "")) is None


def test_remote_workers_join_the_dispatcher_set_and_bad_uris_are_named():
    cfg = parse_config(BASE + "workers: {first_port: 6000, remote: ['sip:10.0.0.2:5060']}\n")
    assert dispatcher_list(cfg, 1).splitlines() == ["1 sip:127.0.0.1:6000 0 0 duid=w0;maxload=4",
                                                    "1 sip:10.0.0.2:5060 0 0 duid=r0;maxload=4"]
    assert worker_config(cfg, 0, 1).sip.port == 6000  # behind the front door even as the only local worker
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + "workers:\n  remote: ['http://x']\n", "vg.yaml")
    assert e.value.issues[0].line == 8 and e.value.issues[0].field.startswith("workers.remote"), e.value.issues


def test_an_announcement_adds_a_worker_that_says_the_text_to_every_number():
    cfg = parse_config(BASE + "workers: {count: 2, first_port: 6000, when_full: {reply: announcement, voice: en, "
                              "text: Busy.}}\n")
    announcer = worker_config(cfg, 2, 2)
    assert (announcer.sip.port, announcer.rtp.port_min, announcer.rtp.port_max) == (6002, 20066, 20098)
    assert announcer.route("anything") == "busy" and list(announcer.agents) == ["busy"]
    steps = announcer.agents["busy"].nodes["busy"]  # type: ignore[union-attr]
    assert steps[0].say == "Busy." and steps[1].hangup == "all_lines_busy"
    assert worker_config(cfg, 1, 2).route("anything") == "e"
    assert dispatcher_list(cfg, 2).splitlines()[-1] == "2 sip:127.0.0.1:6002 0 0 duid=a0"
    one = parse_config(BASE + "workers: {when_full: {reply: announcement}}\n")
    assert worker_config(one, 0, 1).sip.port == 5070  # one worker and the announcer sit behind the front door


def test_fixed_port_endpoints_run_in_worker_0_only(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VG_TEST_TOKEN", "t")
    cfg = parse_config(BASE + "workers: 2\nmetrics: {enabled: true}\ncontrol: {token_env: VG_TEST_TOKEN}\n"
                              "transports:\n  audiosocket: {port: 9999, agent: e}\n")
    w0, w1 = worker_config(cfg, 0, 2), worker_config(cfg, 1, 2)
    assert w0.metrics.enabled and w0.control is not None and w0.transports.audiosocket is not None
    assert w1.transports.audiosocket is None
    assert w1.metrics.enabled  # every worker keeps metrics; the supervisor serves their sum
    # worker 1's control endpoint serves worker 0 its calls' pcaps, on loopback at its SIP port's number
    assert w1.control is not None and (w1.control.listen, w1.control.port) == ("127.0.0.1", w1.sip.port)
    assert control_peers(w0, 0) == [(1, w1.sip.port)] and control_peers(w1, 1) == []
    assert control_peers(worker_config(parse_config(BASE + "workers: 2\n"), 0, 2), 0) == []  # no control endpoint
    announcer = parse_config(BASE + "workers: {count: 2, when_full: {reply: announcement}}\n"
                                    "control: {token_env: VG_TEST_TOKEN}\n")
    assert worker_config(announcer, 2, 2).control is None  # the announcer holds no call worth a pcap
    assert control_peers(worker_config(announcer, 0, 2), 0) == [(1, worker_config(announcer, 1, 2).sip.port)]

@pytest.mark.parametrize(("users", "checked"), [("", True), (", users: {bob: {password_env: VG_X}}", False)])
def test_sip_allow_is_checked_at_the_front_door_unless_users_may_come_from_anywhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, users: str, checked: bool):
    monkeypatch.setenv("VG_X", "pw")
    cfg = parse_config(BASE.replace("port: 5060}", f"port: 5060, allow: [10.1.2.3, 192.168.0.0/16]{users}}}")
                       + "workers: 2\n")
    assert address_list(cfg) == "1 10.1.2.3 32 0\n1 192.168.0.0 16 0\n"
    assert worker_config(cfg, 1, 2).sip.front_door == ["127.0.0.1"]  # workers believe the front door's header
    lst = tmp_path / "dispatcher.list"
    lst.write_text(dispatcher_list(cfg, 2))
    (tmp_path / "address.list").write_text(address_list(cfg))
    text = kamailio_config(cfg, lst)
    (tmp_path / "kamailio.cfg").write_text(text)
    check = subprocess.run(["/usr/sbin/kamailio", "-c", "-f", str(tmp_path / "kamailio.cfg")], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr[-2000:]
    assert ('allow_source_address("1")' in text) == checked
    assert 'append_hf("X-VG-Source: $siz:$sp\\r\\n")' in text


TRUNK = """trunks:
  c: {registrar: "sip:carrier.example:5080", username: vg, password_env: VG_X, transport: tcp}
"""


def test_worker_0_registers_a_trunk_once_through_the_front_door_with_its_contact(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VG_X", "pw")
    cfg = parse_config(BASE.replace("port: 5060}", "port: 5060, transports: [udp, tcp]}") + TRUNK
                       + "workers: {count: 2, first_port: 6000}\n")
    w0, w1 = (worker_config(cfg, i, 2).trunks["c"] for i in range(2))
    assert (w0.registers, w0.contact, w0.outbound_proxy) == (True, "sip:vg@127.0.0.1:5060;transport=tcp", None)
    assert (w1.registers, w1.contact, w1.outbound_proxy) == (False, None, None)
    # every request a worker starts goes through the front door first, then through a trunk's own proxy
    assert {worker_config(cfg, i, 2).sip.outbound_proxy for i in range(2)} == {"sip:127.0.0.1:5060"}
    proxied = parse_config(BASE + TRUNK.replace("}", ", outbound_proxy: 'sip:10.0.0.9', keepalive_s: 5}")
                           + "workers: 2\n")
    w0, w1 = (worker_config(proxied, i, 2).trunks["c"] for i in range(2))
    assert (w0.outbound_proxy, w0.keepalive_s, w1.keepalive_s) == ("sip:10.0.0.9", 5, None)  # worker 0 pings
    assert worker_config(cfg, 1, 2).trunk_status_path.endswith("worker1-trunks.json")
    with pytest.raises(ConfigError, match="registers through the front door, whose address the carrier must call"):
        parse_config(BASE.replace("listen: 127.0.0.1, port: 5060}", "listen: 0.0.0.0, port: 5060, transports: "
                                                                     "[udp, tcp]}") + TRUNK + "workers: 2\n")


def test_with_a_public_address_workers_put_it_in_sdp_and_the_front_doors_in_their_contact(tmp_path: Path):
    cfg = parse_config(BASE.replace("listen: 127.0.0.1, port: 5060}", "listen: 0.0.0.0, port: 5060, "
                                                                       "public_address: 203.0.113.7}") + "workers: 2\n")
    w1 = worker_config(cfg, 1, 2)
    assert (w1.sip.public_address, w1.rtp.public_address) == (None, "203.0.113.7")
    assert w1.sip.contact == f"sip:voicegate@203.0.113.7:5060;vgw={cfg.workers.first_port + 1}"
    lst = tmp_path / "dispatcher.list"
    lst.write_text(dispatcher_list(cfg, 2))
    text = kamailio_config(cfg, lst)
    assert "listen=udp:0.0.0.0:5060 advertise 203.0.113.7:5060\n" in text
    assert "alias=203.0.113.7:5060\nalias=127.0.0.1:5060\n" in text


def test_tls_ends_at_the_front_door_with_the_sip_tls_settings(tmp_path: Path):
    ca, cert, key = make_ca(tmp_path, "unit")
    cfg = parse_config(BASE.replace("port: 5060}", f"port: 5060, transports: [udp, tls], tls: {{port: 5062, "
                                                   f"cert_file: {cert}, key_file: {key}, ca_file: {ca}, "
                                                   "require_client_cert: true}}") + "workers: 2\n")
    assert worker_config(cfg, 0, 2).sip.transports == ["udp"] and worker_config(cfg, 0, 2).sip.tls is None
    text = tls_config(cfg)
    assert f"certificate = {cert}\nprivate_key = {key}\nca_list = {ca}\n" in text
    assert "verify_certificate = yes\nrequire_certificate = yes\n\n[client:default]" in text
    # towards trunks the front door presents the listener's certificate, as a single gateway's TLS transport does
    assert f"[client:default]\nmethod = TLSv1.2+\ncertificate = {cert}\nprivate_key = {key}\n" in text
    lst = tmp_path / "dispatcher.list"
    lst.write_text(dispatcher_list(cfg, 2))
    (tmp_path / "tls.cfg").write_text(text)
    (tmp_path / "kamailio.cfg").write_text(kamailio_config(cfg, lst))
    assert "listen=tls:127.0.0.1:5062\n" in (tmp_path / "kamailio.cfg").read_text()
    check = subprocess.run(["/usr/sbin/kamailio", "-c", "-f", str(tmp_path / "kamailio.cfg")], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr[-2000:]


def _tls_trunks(tmp_path: Path, trunks: str) -> str:
    ca, cert, key = make_ca(tmp_path, "unit")
    return (BASE.replace("port: 5060}", f"port: 5060, transports: [udp, tls], tls: {{port: 5062, cert_file: {cert}, "
                                         f"key_file: {key}, ca_file: {ca}}}}}")
            + trunks.format(cert=cert, key=key) + "workers: {count: 2, first_port: 6000}\n")


def test_the_front_door_presents_a_trunks_own_certificate_to_its_servers(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path):
    """A client profile selected by server id, which the script sets for requests whose next hop is the trunk's
    registrar or proxy; the workers behind present none (they speak UDP to the front door)."""
    monkeypatch.setenv("VG_X", "pw")
    cfg = parse_config(_tls_trunks(tmp_path, """trunks:
  own: {{registrar: "sip:Carrier.example:5081", outbound_proxy: "sip:192.0.2.7", transport: tls, username: vg,
        password_env: VG_X, tls: {{cert_file: {cert}, key_file: {key}, verify_server: false}}}}
  plain: {{registrar: "sip:other.example:5061", transport: tls, username: vg, password_env: VG_X}}
"""))
    assert [worker_config(cfg, i, 2).trunks["own"].tls for i in (0, 1)] == [None, None]
    text = tls_config(cfg)
    profile = text.split("[client:any]\n", 1)[1]
    assert profile.startswith("server_name = vg-trunk-own.invalid\nserver_id = vg-trunk-own\n"), text
    assert f"certificate = {cfg.trunks['own'].tls.cert_file}\n" in profile  # type: ignore[union-attr]
    assert "verify_certificate = no\n" in profile and text.count("[client:any]") == 1
    lst = tmp_path / "dispatcher.list"
    lst.write_text(dispatcher_list(cfg, 2))
    (tmp_path / "tls.cfg").write_text(text)
    script = kamailio_config(cfg, lst)
    assert '$var(host) == "carrier.example" && $var(port) == "5081") { $xavp(tls=>server_id) = "vg-trunk-own"; }' \
        in script and '$var(host) == "192.0.2.7" && $var(port) == "")' in script and "other.example" not in script
    assert script.count("route(TRUNK_TLS);") == 2  # a worker's new request, and in-dialog ones
    (tmp_path / "kamailio.cfg").write_text(script)
    check = subprocess.run(["/usr/sbin/kamailio", "-c", "-f", str(tmp_path / "kamailio.cfg")], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr[-2000:]
    door = FrontDoor(cfg, 2)
    try:  # a reload cannot change the profiles of the running Kamailio
        with pytest.raises(RuntimeError, match=r"trunks.NAME.tls\) or its servers changed"):
            door.reload_acl(cfg.model_copy(update={"trunks": {"plain": cfg.trunks["plain"]}}))
        assert not door.reload_acl(cfg)
    finally:
        door.remove()


def test_two_trunks_to_one_server_with_different_certificates_are_refused(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path):
    monkeypatch.setenv("VG_X", "pw")
    trunks = """trunks:
  a: {{registrar: "sips:carrier.example", username: a, password_env: VG_X, transport: tls}}
  b: {{registrar: "sip:CARRIER.example:5061", username: b, password_env: VG_X, transport: tls,
      tls: {{cert_file: {cert}, key_file: {key}}}}}
"""
    with pytest.raises(ConfigError) as e:
        parse_config(_tls_trunks(tmp_path, trunks), "vg.yaml")
    issue = e.value.issues[0]
    assert (issue.field, issue.message) == ("workers", "trunks.b.tls: trunk a reaches carrier.example:5061 too, with "
                                            "another client certificate; the front door keeps one TLS connection per "
                                            "server"), issue
    assert parse_config(_tls_trunks(tmp_path, trunks).replace("{count: 2, first_port: 6000}", "1"))  # one gateway


def test_the_front_doors_acl_lets_the_trunks_addresses_in_and_leaves_inbound_auth_to_the_workers(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("VG_X", "pw")
    trunk = ("trunks:\n  c: {registrar: 'sip:192.0.2.9:5080', username: vg, password_env: VG_X, register: false, "
             "allow: [198.51.100.0/24]}\n")
    cfg = parse_config(BASE.replace("port: 5060}", "port: 5060, allow: [10.1.2.3]}") + trunk + "workers: 2\n")
    assert address_list(cfg) == "1 10.1.2.3 32 0\n1 198.51.100.0 24 0\n1 192.0.2.9 32 0\n"
    lst = tmp_path / "dispatcher.list"
    assert 'allow_source_address("1")' in kamailio_config(cfg, lst)
    auth = parse_config(BASE.replace("port: 5060}", "port: 5060, allow: [10.1.2.3]}")
                        + trunk.replace("register: false", "register: false, inbound_auth: true") + "workers: 2\n")
    assert 'allow_source_address("1")' not in kamailio_config(auth, lst)


def test_asking_a_worker_that_does_not_listen_is_an_oserror():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(OSError):
        ask_worker(port, "c1@host", "token")


def test_a_trunk_requiring_client_certificates_is_refused_behind_the_front_door(monkeypatch: pytest.MonkeyPatch,
                                                                                 tmp_path: Path):
    monkeypatch.setenv("VG_X", "pw")
    text = _tls_trunks(tmp_path, """trunks:
  carrier: {{registrar: "sip:carrier.example", transport: tls, username: vg, password_env: VG_X,
            tls: {{require_client_cert: true, ca_file: {cert}}}}}
""")
    with pytest.raises(ConfigError, match="require_client_cert: not supported behind the front door yet"):
        parse_config(text)
