"""Calls from no trunk: the top-level `sip.allow` source ACL and `sip.users` digest credentials."""

from __future__ import annotations

import re

import pytest

from telephony.config import ConfigError, parse_config
from telephony.digest import NONCE_KEY_ENV, DigestServer, expected_response, nonce_key
from telephony.inbound import SOURCE_HEADER, Admission, Invite, admit, caller_source
from telephony.supervisor import Supervisor

BASE = """\
agents:
  e:
    type: echo
routes:
  - match: "*"
    agent: e
sip:
  listen: 127.0.0.1
{sip}"""
URI = "sip:100@gw"
SECRET = b"s" * 32


def _cfg(monkeypatch: pytest.MonkeyPatch, sip: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("VG_ALICE_PW", "alice-pw")
    monkeypatch.delenv("VG_NOBODY_PW", raising=False)
    return parse_config(BASE.format(sip=sip), "vg.yaml")


def _credentials(user: str, password: str, now: float, realm: str = "voicegate", uri: str = URI) -> str:
    challenge = DigestServer(realm, SECRET).challenge(now)
    nonce = re.search(r'nonce="([^"]+)"', challenge).group(1)  # type: ignore[union-attr]
    resp = expected_response(user, realm, password, "INVITE", uri, nonce, "auth", "00000001", "c0ffee")
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{resp}", '
            'qop=auth, nc=00000001, cnonce="c0ffee", algorithm=MD5')


def _admit(cfg, src: str, authorization: str = "", now: float = 1000.0) -> Admission:  # type: ignore[no-untyped-def]
    return admit(cfg.trunks, {}, "", "100", src, Invite(URI, authorization), now, SECRET, cfg.sip)


def test_without_allow_or_users_any_source_may_call(monkeypatch):
    cfg = _cfg(monkeypatch, "")
    assert _admit(cfg, "198.51.100.7:5060") == Admission("")


def test_a_source_outside_allow_gets_403_naming_it(monkeypatch):
    cfg = _cfg(monkeypatch, "  allow: [192.168.10.0/24, '::1']\n")
    assert _admit(cfg, "192.168.10.20:5060") == Admission("")
    assert _admit(cfg, "[::1]:5062") == Admission("")
    refused = _admit(cfg, "192.168.11.20:5060")
    assert refused.refused == "192.168.11.20 is not in sip.allow" and not refused.challenge


def test_users_challenge_outside_allow_and_admit_good_credentials(monkeypatch):
    cfg = _cfg(monkeypatch, "  allow: [127.0.0.1]\n  users:\n    alice: {password_env: VG_ALICE_PW}\n")
    assert _admit(cfg, "127.0.0.1:5060") == Admission("")  # allowed address: no credentials needed
    first = _admit(cfg, "127.0.0.2:5060")
    assert first.refused == "127.0.0.2 sent no credentials (sip.users)"
    assert first.challenge.startswith('Digest realm="voicegate", nonce=')
    good = _admit(cfg, "127.0.0.2:5060", _credentials("alice", "alice-pw", 1000.0), 1001.0)
    assert good == Admission("", authenticated=True, user="alice")
    wrong = _admit(cfg, "127.0.0.2:5060", _credentials("alice", "guess", 1000.0), 1001.0)
    assert wrong.refused == "127.0.0.2 failed digest authentication as user alice: wrong password"
    assert not wrong.challenge
    stranger = _admit(cfg, "127.0.0.2:5060", _credentials("mallory", "alice-pw", 1000.0), 1001.0)
    assert stranger.refused == "127.0.0.2 failed digest authentication: unknown user 'mallory'"
    stale = _admit(cfg, "127.0.0.2:5060", _credentials("alice", "alice-pw", 1000.0), 1100.0)
    assert stale.refused.startswith("127.0.0.2 sent a stale nonce") and stale.challenge  # a fresh one
    other_realm = _admit(cfg, "127.0.0.2:5060", _credentials("alice", "alice-pw", 1000.0, realm="x"), 1001.0)
    assert other_realm.refused.endswith("unknown user 'alice' in realm 'x'")


def test_users_alone_challenge_every_source(monkeypatch):
    cfg = _cfg(monkeypatch, "  realm: pbx.example\n  users:\n    alice: {password_env: VG_ALICE_PW}\n")
    assert _admit(cfg, "127.0.0.1:5060").challenge.startswith('Digest realm="pbx.example"')
    ok = _admit(cfg, "127.0.0.1:5060", _credentials("alice", "alice-pw", 1000.0, "pbx.example"), 1001.0)
    assert ok.authenticated


def test_bad_allow_and_missing_password_env_are_named_with_their_lines(monkeypatch):
    with pytest.raises(ConfigError) as e:
        _cfg(monkeypatch, "  allow:\n    - 10.0.0.0/8\n    - not-a-net\n  users:\n"
                          "    bob: {password_env: VG_NOBODY_PW}\n")
    issues = [str(i) for i in e.value.issues]
    assert issues[0].startswith("vg.yaml:11: sip.allow.1: ") and "not-a-net" in issues[0], issues
    assert issues[1] == ("vg.yaml:13: sip.users.bob.password_env: environment variable VG_NOBODY_PW (the user's "
                         "password) is not set or empty"), issues


def test_several_workers_take_sip_allow_and_users(monkeypatch):
    assert _cfg(monkeypatch, "  allow: [127.0.0.1]\nworkers: 2\n").workers.count == 2
    assert _cfg(monkeypatch, "  users:\n    alice: {password_env: VG_ALICE_PW}\nworkers: 2\n").workers.count == 2


def test_the_callers_address_is_the_front_doors_header_only_from_the_front_door():
    named = {SOURCE_HEADER: "203.0.113.5:5060"}
    assert caller_source("127.0.0.1:5060", named, ["127.0.0.1/32"]) == "203.0.113.5:5060"
    assert caller_source("10.9.9.9:5060", named, ["127.0.0.1/32"]) == "10.9.9.9:5060"  # forged: not the door
    assert caller_source("127.0.0.1:5060", named, []) == "127.0.0.1:5060"  # no front door: a single gateway
    assert caller_source("127.0.0.1:5060", {}, ["127.0.0.1/32"]) == "127.0.0.1:5060"


def test_workers_share_the_supervisors_nonce_key(monkeypatch):
    """A challenge one worker sent may be answered, through the front door, to another worker."""
    cfg = _cfg(monkeypatch, "  users:\n    alice: {password_env: VG_ALICE_PW}\nworkers: 2\n")
    env = Supervisor(cfg, "vg.yaml", 2)._env
    monkeypatch.setenv(NONCE_KEY_ENV, env[NONCE_KEY_ENV])
    worker_a, worker_b = nonce_key(), nonce_key()  # each worker process reads it at start
    assert worker_a == worker_b == bytes.fromhex(env[NONCE_KEY_ENV]) and len(worker_a) == 32
    nonce = re.search(r'nonce="([^"]+)"', DigestServer("voicegate", worker_a).challenge(1000.0)).group(1)  # type: ignore[union-attr]
    resp = expected_response("alice", "voicegate", "alice-pw", "INVITE", URI, nonce)
    answer = f'Digest username="alice", realm="voicegate", nonce="{nonce}", uri="{URI}", response="{resp}"'
    assert DigestServer("voicegate", worker_b).check(answer, "INVITE", URI, "alice", "alice-pw", 1001.0) == ""
    monkeypatch.setenv(NONCE_KEY_ENV, "not hex")
    assert nonce_key() != nonce_key()  # alone: a random key per process
