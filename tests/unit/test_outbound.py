"""Outbound call plans (trunk, request URI, caller ID, the toll-fraud guard) and the control endpoint's request
parsing; config faults located by line."""

from __future__ import annotations

import pytest

from telephony.config import Config, ConfigError, parse_config
from telephony.control import parse_request
from telephony.outbound import AmdOptions, DialRefusedError, plan_dial

CONFIG = """\
agents:
  bot:
    type: echo
routes:
  - match: "*"
    agent: bot
trunks:
  carrier:
    registrar: sip:sip.example.com:5070
    username: vg
    password_env: VG_OUT_PW
    caller_id: "+4930555"
    allowed: ['\\+?4930\\d{{6,8}}', '1\\d{{3}}']
  pbx:
    registrar: sip:pbx.example.com
    username: vgpbx
    password_env: VG_OUT_PW
    transport: tcp
    allowed: ['{pbx}']
control:
  port: 9999
  token_env: VG_OUT_TOKEN
  allow_uris: ['sip:[a-z]+@127\\.0\\.0\\.1(:\\d+)?']
"""


def _cfg(monkeypatch: pytest.MonkeyPatch, pbx: str = "2\\d{2}") -> Config:
    monkeypatch.setenv("VG_OUT_PW", "pw")
    monkeypatch.setenv("VG_OUT_TOKEN", "tok")
    return parse_config(CONFIG.format(pbx=pbx), "vg.yaml")


def test_a_number_goes_out_on_its_trunk_as_the_trunks_caller_id(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(monkeypatch)
    p = plan_dial(cfg, "+493012345678", "bot", "carrier")
    assert (p.uri, p.trunk, p.caller_id) == ("sip:+493012345678@sip.example.com:5070", "carrier", "+4930555")
    p = plan_dial(cfg, "205", "bot", "pbx")
    assert (p.uri, p.caller_id) == ("sip:205@pbx.example.com;transport=tcp", "vgpbx")


def test_numbers_outside_the_patterns_are_refused_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(monkeypatch)
    for number in ("+4930123", "+49301234567890", "1000#", "9001", "+44301234567"):
        with pytest.raises(DialRefusedError) as e:
            plan_dial(cfg, number, "bot", "carrier")
        assert e.value.status == 403 and "not allowed on trunk carrier" in e.value.message
    with pytest.raises(DialRefusedError, match="not a number"):
        plan_dial(cfg, "12; rm", "bot", "carrier")


def test_the_trunk_must_be_named_when_several_place_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DialRefusedError, match=r"name the trunk to dial 1000 on \(one of carrier, pbx\)"):
        plan_dial(_cfg(monkeypatch), "1000", "bot")
    with pytest.raises(DialRefusedError, match="unknown trunk 'nope'") as e:
        plan_dial(_cfg(monkeypatch), "1000", "bot", "nope")
    assert e.value.status == 404
    with pytest.raises(DialRefusedError, match="unknown agent 'x'"):
        plan_dial(_cfg(monkeypatch), "1000", "x", "carrier")


def test_sip_uris_only_where_control_allows_them(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(monkeypatch)
    assert plan_dial(cfg, "sip:desk@127.0.0.1:5080", "bot").uri == "sip:desk@127.0.0.1:5080"
    with pytest.raises(DialRefusedError, match="control.allow_uris") as e:
        plan_dial(cfg, "sip:desk@10.0.0.1", "bot")
    assert e.value.status == 403
    with pytest.raises(DialRefusedError, match="leave out the trunk"):
        plan_dial(cfg, "sip:desk@127.0.0.1", "bot", "carrier")
    with pytest.raises(DialRefusedError, match="needs SIP over TLS: sip.transports has no tls") as e:
        plan_dial(cfg, "sips:desk@127.0.0.1:5081", "bot")  # allowed, but the gateway has no TLS to place it with
    assert e.value.status == 400


def test_a_bad_pattern_and_a_missing_token_are_named_by_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as e:
        _cfg(monkeypatch, pbx="2(")
    assert [str(i) for i in e.value.issues][0].startswith("vg.yaml:19: trunks.pbx.allowed.0: bad regular expression")
    monkeypatch.delenv("VG_OUT_TOKEN")
    with pytest.raises(ConfigError) as e:
        parse_config(CONFIG.format(pbx="2"), "vg.yaml")
    assert str(e.value.issues[0]) == ("vg.yaml:22: control.token_env: environment variable VG_OUT_TOKEN (the "
                                      "control token) is not set or empty")


@pytest.mark.parametrize(("body", "error"), [
    (b"[1]", "must be a JSON object"),
    (b'{"number": "1"}', "agent is required"),
    (b'{"number": "1", "agent": "a", "ring_s": 0}', "ring_s must be"),
    (b'{"number": "1", "agent": "a", "from": "x"}', "unknown field 'from'"),
    (b"\xff", "not JSON"),
    (b'{"number": "1", "agent": "a", "amd": {"machine": "voicemail"}}', "hangup or message"),
    (b'{"number": "1", "agent": "a", "amd": {"machine": "message"}}', "needs the amd.message"),
])
def test_bad_requests_name_the_field(body: bytes, error: str) -> None:
    with pytest.raises(DialRefusedError, match=error) as e:
        parse_request(body)
    assert e.value.status == 400


def test_a_good_request() -> None:
    assert parse_request(b'{"number": "+4930", "agent": "a", "trunk": "t", "ring_s": 20}') == ("+4930", "a", "t", 20.0,
                                                                                             None)
    got = parse_request(b'{"number": "1", "agent": "a", "amd": {"machine": "message", "message": "Hi."}}')
    assert got[4] == AmdOptions("message", "Hi.")
