from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path

import pytest

from agents.transfer_headers import uri_with_headers
from telephony.cli import main
from telephony.client_certs import client_cert_problem
from telephony.config import ConfigError, TrunkTlsConfig, load_config, parse_config
from telephony.digest import DigestServer, expected_response
from telephony.inbound import Admission, Invite, admit, source_ip
from telephony.registration import Registration
from telephony.sip_headers import call_metadata, original_called, request_parts
from telephony.sip_uri import parse_sip_uri
from telephony.trunk_status import status_table
from tests.integration.test_tls import issue, make_ca

BASE = """\
agents:
  e:
    type: echo
  d:
    type: echo
routes:
  - match: "*"
    agent: d
trunks:
  carrier:
    registrar: {registrar}
    username: vg
    password_env: {env}
    transport: {transport}
    routes:
      - match: "+4930123"
        agent: e
"""


def _cfg(monkeypatch: pytest.MonkeyPatch, registrar: str = "sip:sip.example.com:5060", env: str = "VG_T_PW",
         transport: str = "udp") -> str:
    monkeypatch.setenv("VG_T_PW", "pw")
    monkeypatch.delenv("VG_T_MISSING", raising=False)
    return BASE.format(registrar=registrar, env=env, transport=transport)


def _issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "vg.yaml")
    return [str(i) for i in e.value.issues]


def test_sip_uris_parse_and_bad_ones_say_why():
    u = parse_sip_uri("sip:vg@[2001:db8::1]:5070;transport=TCP")
    assert (u.user, u.host, u.port, u.params) == ("vg", "2001:db8::1", 5070, {"transport": "TCP"})
    assert parse_sip_uri("sips:carrier.example").scheme == "sips"
    for bad, why in [("http://x", "not a SIP URI"), ("sip:bad_host!", "not a SIP URI"), ("sip:h:70000", "port"),
                     ("sip:-x.example", "host name")]:
        with pytest.raises(ValueError, match=why):
            parse_sip_uri(bad)


def test_trunk_config_routes_its_dids_first(monkeypatch):
    cfg = parse_config(_cfg(monkeypatch))
    t = cfg.trunks["carrier"]
    assert t.password == "pw" and t.realm == "*" and t.expiry_s == 300
    assert cfg.route("+4930123", "carrier") == "e"
    assert cfg.route("+4930123") == "d"  # not from the trunk: the global routes
    assert cfg.route("+4930999", "carrier") == "d"


def test_check_names_a_bad_registrar_uri_with_its_line(monkeypatch):
    issues = _issues(_cfg(monkeypatch, registrar="sip:carrier example"))
    assert issues == ["vg.yaml:11: trunks.carrier.registrar: 'sip:carrier example' is not a SIP URI "
                      "(expected sip:host[:port][;params])"]


def test_check_names_a_missing_password_env_var_with_its_line(monkeypatch):
    issues = _issues(_cfg(monkeypatch, env="VG_T_MISSING"))
    assert issues == ["vg.yaml:13: trunks.carrier.password_env: environment variable VG_T_MISSING (the trunk "
                      "password) is not set or empty"]


def test_check_refuses_a_transport_the_gateway_does_not_listen_on(monkeypatch):
    text = _cfg(monkeypatch, transport="tcp") + "sip:\n  transports: [udp]\n"
    assert _issues(text) == ["vg.yaml:14: trunks.carrier.transport: tcp is not in sip.transports (udp)"]
    text = _cfg(monkeypatch).replace("agent: e", "agent: nobody")
    assert _issues(text) == ["vg.yaml:17: trunks.carrier.routes.0.agent: unknown agent 'nobody'"]
    text = _cfg(monkeypatch, registrar="sip:h;transport=tcp")
    assert any("registrar says transport=tcp but transport is udp" in i for i in _issues(text))


def test_status_path_is_relative_to_the_config_file(monkeypatch, tmp_path: Path):
    (tmp_path / "vg.yaml").write_text(_cfg(monkeypatch))
    assert load_config(tmp_path / "vg.yaml").trunk_status_path == str(tmp_path / "run" / "trunks.json")


def test_registration_refreshes_failures_and_backoff():
    r = Registration("c", retry_min_s=2, retry_max_s=10)
    assert r.started(0.0, True)[0]["state"] == "registering"
    ev = r.result(0.5, 200, "OK", 60)[0]
    assert ev["state"] == "registered" and ev["expires_s"] == 60 and "refresh" not in ev
    assert r.started(55.0, True) == []  # a refresh is not a state change
    assert r.result(55.1, 200, "OK", 60)[0]["refresh"] and r.refreshes == 1
    waits = []
    for i in range(5):
        ev = r.result(100.0 + i, 401, "Unauthorized", 0)[0]
        waits.append(ev["retry_in_s"])
        assert ev["state"] == "failed" and ev["code"] == 401
    assert waits == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert not r.due(113.9) and r.due(114.0) and r.state == "registering"
    assert r.started(114.0, True) == []  # the retry's REGISTER: `due` already said so
    assert not r.due(200.0)  # retried once, until the next result
    r.result(201.0, 200, "OK", 60)
    assert r.failures == 0 and r.refreshes == 1  # a recovery is not a refresh
    st = r.status(201.0, 1000.0)
    assert st["state"] == "registered" and st["expires_at"] == 1060.0 and st["next_retry"] is None
    assert r.result(300.0, 200, "OK", 0)[0]["state"] == "unregistered"


def test_inbound_calls_of_a_trunk_only_from_its_addresses(monkeypatch):
    cfg = parse_config(_cfg(monkeypatch))
    nets = {"carrier": [ipaddress.ip_network("192.0.2.0/29")]}
    assert admit(cfg.trunks, nets, "carrier", "x", "192.0.2.5:5060").trunk == "carrier"
    refused = admit(cfg.trunks, nets, "carrier", "x", "198.51.100.7:5060")
    assert refused.refused == "198.51.100.7 is not an address of trunk carrier"
    # a DID of the trunk sent straight to the gateway from elsewhere
    assert admit(cfg.trunks, nets, "", "+4930123", "198.51.100.7:5060").refused
    assert admit(cfg.trunks, nets, "", "+4930123", "192.0.2.1:5060") .trunk == "carrier"
    assert admit(cfg.trunks, nets, "", "demo", "198.51.100.7:5060").trunk == ""
    assert source_ip("[2001:db8::1]:5060") == "2001:db8::1" and source_ip("10.0.0.1:5") == "10.0.0.1"


def test_status_table_names_state_and_staleness():
    doc = {"updated": 990.0, "pid": 2**22 + 7, "running": True,
           "trunks": [{"trunk": "c", "state": "failed", "code": 401, "reason": "Unauthorized", "refreshes": 0,
                       "expires_at": None, "next_retry": 1004.0}]}
    lines = status_table(doc, ["c", "other"], now=1000.0)
    assert lines[1].split() == ["c", "failed", "401", "Unauthorized", "-", "4", "s", "0"]
    assert lines[2].startswith("other") and "not in status file" in lines[2]
    assert lines[-1].startswith("stale: voicegate pid")


def test_call_metadata_keeps_identity_diversion_x_and_uui_headers():
    msg = ("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP x\r\np-asserted-identity: <sip:+4930@c>\r\nPrivacy: id\r\n"
           "Diversion: <sip:1@x>;reason=unconditional\r\nDiversion: <sip:2@x>\r\nX-Customer-Id: 42\r\n  folded\r\n"
           "User-to-User: 0401;encoding=hex\r\nContent-Length: 15\r\n\r\nX-Not-A-Header: 1\r\n")
    assert call_metadata(msg) == {
        "P-Asserted-Identity": "<sip:+4930@c>", "Privacy": "id",
        "Diversion": "<sip:1@x>;reason=unconditional, <sip:2@x>", "X-Customer-Id": "42 folded",
        "User-to-User": "0401;encoding=hex",
    }


def test_routes_can_match_headers(monkeypatch):
    text = _cfg(monkeypatch).replace('  - match: "*"\n    agent: d\n', (
        '  - match: "*"\n    match_header: {X-Lang: "/^de/", X-Tier: gold}\n    agent: e\n'
        '  - match: "*"\n    agent: d\n'))
    cfg = parse_config(text)
    assert cfg.route("1", headers={"x-lang": "de-DE", "X-Tier": "gold"}) == "e"
    assert cfg.route("1", headers={"X-Lang": "de-DE"}) == "d"
    assert cfg.route("1") == "d"
    assert any("match_header" in i for i in _issues(text.replace("/^de/", "/(/")))


def test_transfer_headers_go_into_the_refer_to_uri_escaped():
    assert uri_with_headers("sip:desk@pbx", {}) == "sip:desk@pbx"
    assert (uri_with_headers("sip:desk@pbx", {"X-Case": "42 a", "User-to-User": "0a;encoding=hex"})
            == "sip:desk@pbx?X-Case=42%20a&User-to-User=0a%3Bencoding%3Dhex")


def test_tls_settings_are_checked(monkeypatch, tmp_path: Path):
    base = _cfg(monkeypatch)
    assert any("transports has tls but there is no sip.tls section" in i
               for i in _issues(base + "sip:\n  transports: [udp, tls]\n"))
    missing = base + f"sip:\n  transports: [udp, tls]\n  tls:\n    cert_file: {tmp_path}/no.crt\n    key_file: x\n"
    issues = _issues(missing)
    assert f"vg.yaml:21: sip.tls.cert_file: no such file: {tmp_path}/no.crt" in issues
    assert "vg.yaml:22: sip.tls.key_file: no such file: x" in issues
    assert any("a sips: registrar needs transport tls, not udp" in i
               for i in _issues(_cfg(monkeypatch, registrar="sips:carrier.example")))


def test_status_table_of_a_stopped_gateway_shows_no_timers():
    doc = {"updated": 990.0, "pid": 1, "running": False,
           "trunks": [{"trunk": "c", "state": "registered", "code": 200, "reason": "OK", "refreshes": 3,
                       "expires_at": 1020.0, "next_retry": None}]}
    lines = status_table(doc, ["c"], now=1000.0)
    assert lines[1].split() == ["c", "registered", "200", "OK", "-", "-", "3"]
    assert lines[-1].startswith("voicegate (pid 1) stopped 10 s ago")


def test_digest_response_matches_the_published_sip_examples():
    # draft-smith-sipping-auth-examples-01, 3.1 (no qop) and 3.2 (qop=auth)
    args = ("bob", "biloxi.com", "zanzibar", "INVITE", "sip:bob@biloxi.com", "dcd98b7102dd2f0e8b11d0f600bfb0c093")
    assert expected_response(*args) == "bf57e4e0d0bffc0fbaedce64d59add5e"
    assert expected_response(*args, "auth", "00000001", "0a4f113b") == "89eb0059246c02b2f6ee02c7961d5ea3"


def _credentials(server: DigestServer, now: float, password: str, uri: str = "sip:+4930123@gw") -> str:
    nonce = re.search(r'nonce="([^"]+)"', server.challenge(now)).group(1)  # type: ignore[union-attr]
    resp = expected_response("vg", server.realm, password, "INVITE", uri, nonce, "auth", "00000001", "c0ffee")
    return (f'Digest username="vg", realm="{server.realm}", nonce="{nonce}", uri="{uri}", response="{resp}", '
            'qop=auth, nc=00000001, cnonce="c0ffee", algorithm=MD5')


def test_digest_server_checks_password_freshness_nonce_and_uri():
    server = DigestServer("voicegate", b"k" * 32)
    ok = _credentials(server, 1000.0, "pw")
    assert server.check(ok, "INVITE", "sip:+4930123@gw", "vg", "pw", 1010.0) == ""
    assert server.check(_credentials(server, 1000.0, "nope"), "INVITE", "sip:+4930123@gw", "vg", "pw",
                        1010.0) == "wrong password"
    assert server.check(ok, "INVITE", "sip:+4930123@gw", "vg", "pw", 1061.0) == "stale"
    assert server.check(ok, "INVITE", "sip:other@gw", "vg", "pw", 1010.0) == "digest uri is not the request URI"
    forged = DigestServer("voicegate", b"x" * 32)
    assert server.check(_credentials(forged, 1000.0, "pw"), "INVITE", "sip:+4930123@gw", "vg", "pw",
                        1010.0) == "bad nonce"
    assert server.check('Basic dmc6cHc=', "INVITE", "sip:+4930123@gw", "vg", "pw", 1010.0) == "no digest credentials"


def test_a_trunk_with_inbound_auth_challenges_foreign_addresses(monkeypatch):
    text = _cfg(monkeypatch).replace("    transport: udp\n", "    transport: udp\n    inbound_auth: true\n")
    cfg = parse_config(text)
    nets = {"carrier": [ipaddress.ip_network("192.0.2.0/29")]}
    secret, uri = b"s" * 32, "sip:+4930123@gw"
    first = admit(cfg.trunks, nets, "", "+4930123", "198.51.100.7:5060", Invite(uri), 1000.0, secret)
    assert first.challenge.startswith('Digest realm="voicegate", nonce=') and first.refused
    server = DigestServer("voicegate", secret)
    good = admit(cfg.trunks, nets, "", "+4930123", "198.51.100.7:5060",
                 Invite(uri, _credentials(server, 1000.0, "pw")), 1001.0, secret)
    assert good == Admission("carrier", authenticated=True)
    bad = admit(cfg.trunks, nets, "", "+4930123", "198.51.100.7:5060",
                Invite(uri, _credentials(server, 1000.0, "guess")), 1001.0, secret)
    assert bad.refused.endswith("wrong password") and not bad.challenge
    assert admit(cfg.trunks, nets, "", "+4930123", "192.0.2.1:5060", Invite(uri), 1000.0, secret).refused == ""


def test_request_parts_give_the_uri_and_authorization():
    msg = "INVITE sip:+4930123@gw SIP/2.0\r\nAuthorization: Digest username=\"vg\",\r\n realm=\"r\"\r\n\r\n"
    assert request_parts(msg) == ("sip:+4930123@gw", 'Digest username="vg", realm="r"')


def test_cli_check_and_trunks_name_what_is_wrong(monkeypatch, tmp_path: Path, capsys):
    cfg = tmp_path / "vg.yaml"
    cfg.write_text(_cfg(monkeypatch, env="VG_T_MISSING"))
    assert main(["check", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"{cfg}:13: trunks.carrier.password_env: environment variable VG_T_MISSING" in err
    cfg.write_text(_cfg(monkeypatch))
    assert main(["trunks", "--config", str(cfg)]) == 1
    assert f"no status in {tmp_path / 'run' / 'trunks.json'}" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "trunks.json").write_text('{"updated": 1, "pid": 1, "running": false, "trunks": []}')
    assert main(["trunks", "--config", str(cfg)]) == 0
    assert "carrier  not in status file" in capsys.readouterr().out


def test_original_called_number_from_history_info_or_diversion():
    hi = "<sip:+4930111@a;cause=302>;index=1, <sip:+4930222@b>;index=1.1"
    assert original_called({"History-Info": hi, "Diversion": "<sip:x@y>"}) == "+4930111"
    assert original_called({"Diversion": "<sip:+4930333@a>;reason=no-answer, <tel:+4930444>;reason=unconditional"}
                           ) == "+4930444"
    assert original_called({}) == ""


def test_a_certificate_that_does_not_load_is_named(monkeypatch, tmp_path: Path):
    (tmp_path / "c.pem").write_text("not a certificate\n")
    text = _cfg(monkeypatch) + (f"sip:\n  transports: [udp, tls]\n  tls:\n    cert_file: {tmp_path}/c.pem\n"
                                f"    key_file: {tmp_path}/c.pem\n")
    [issue] = _issues(text)
    assert issue.startswith(f"vg.yaml:21: sip.tls: cannot use cert_file {tmp_path}/c.pem with key_file")


def test_dtmf_mode_comes_from_the_route_then_the_trunk_then_rfc4733(monkeypatch):
    cfg = parse_config(_cfg(monkeypatch).replace("    transport: udp\n", "    transport: udp\n    dtmf_mode: info\n")
                       .replace('  - match: "*"\n', '  - match: "4733"\n    agent: d\n    dtmf_mode: rfc4733\n'
                                                    '  - match: "*"\n'))
    assert cfg.dtmf_mode("+4930123", "carrier") == "info"  # the trunk's route says nothing: the trunk's mode
    assert cfg.dtmf_mode("4733", "carrier") == "rfc4733"  # a global route's own mode wins over the trunk's
    assert cfg.dtmf_mode("+4930999", "carrier") == "info"
    assert cfg.dtmf_mode("+4930999") == "rfc4733"  # no trunk, no mode on the route


def test_check_names_an_unknown_dtmf_mode_with_its_line(monkeypatch):
    issues = _issues(_cfg(monkeypatch).replace("    transport: udp\n", "    transport: udp\n    dtmf_mode: inband\n"))
    assert issues == ["vg.yaml:15: trunks.carrier.dtmf_mode: Input should be 'rfc4733' or 'info'"]
    issues = _issues(_cfg(monkeypatch).replace("    agent: d\n", "    agent: d\n    dtmf_mode: 2833\n"))
    assert issues == ["vg.yaml:9: routes.0.dtmf_mode: Input should be 'rfc4733' or 'info'"]


def test_a_trunks_own_tls_certificate_needs_tls_and_files_that_load(monkeypatch, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    own = f"    tls:\n      cert_file: {bad}\n      key_file: {bad}\n"
    issues = _issues(_cfg(monkeypatch).replace("    transport: udp\n", "    transport: udp\n" + own))
    assert issues[0].startswith(f"vg.yaml:16: trunks.carrier.tls: cannot use cert_file {bad} with key_file {bad}")
    missing = own.replace(f"cert_file: {bad}", "cert_file: /nonexistent.pem")
    issues = _issues(_cfg(monkeypatch).replace("    transport: udp\n", "    transport: udp\n" + missing))
    assert issues == ["vg.yaml:16: trunks.carrier.tls.cert_file: no such file: /nonexistent.pem"]
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=t"], check=True, capture_output=True)
    good = f"    tls:\n      cert_file: {cert}\n      key_file: {key}\n"
    issues = _issues(_cfg(monkeypatch).replace("    transport: udp\n", "    transport: udp\n" + good))
    assert issues == ["vg.yaml:16: trunks.carrier.tls: a trunk's own TLS certificate needs transport: tls, not udp"]


def test_a_trunk_requiring_client_certificates_needs_its_ca_and_checks_the_chain(monkeypatch, tmp_path):
    need = "    tls:\n      require_client_cert: true\n"
    issues = _issues(_cfg(monkeypatch, transport="tls").replace("    transport: tls\n", "    transport: tls\n" + need))
    assert issues == ["vg.yaml:16: trunks.carrier.tls: require_client_cert needs ca_file: the CA that "
                      "signs this trunk's client certificates"]
    ca, _, _ = make_ca(tmp_path, "carrier")
    rogue_ca, _, _ = make_ca(tmp_path, "rogue")
    cert, _ = issue(tmp_path, "carrier", "sbc", "sbc.carrier.example", "DNS:sbc.carrier.example")
    rogue, _ = issue(tmp_path, "rogue", "other", "sbc.carrier.example", "DNS:sbc.carrier.example")
    tls = TrunkTlsConfig(require_client_cert=True, ca_file=str(ca))
    assert client_cert_problem("carrier", tls, True, cert.read_text()) == ""
    assert "'sbc.carrier.example' does not verify against its ca_file" in client_cert_problem(
        "carrier", tls, True, rogue.read_text())
    assert "presented none" in client_cert_problem("carrier", tls, True, "")
    assert "came without TLS" in client_cert_problem("carrier", tls, True, None)
    assert "came without TLS" in client_cert_problem("carrier", tls, False, cert.read_text())
