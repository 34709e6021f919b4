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
from telephony.frontdoor import dispatcher_list, kamailio_config
from telephony.workers import Restarts, control_peers, rtp_slice, worker_config

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


def test_several_workers_refuse_tls_public_address_and_registering_trunks():
    with pytest.raises(ConfigError, match="public_address are not there yet"):
        parse_config(BASE.replace("port: 5060}", "port: 5060, public_address: 192.0.2.1}") + "workers: 2\n")


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
    assert not w1.metrics.enabled and w1.transports.audiosocket is None
    # worker 1's control endpoint serves worker 0 its calls' pcaps, on loopback at its SIP port's number
    assert w1.control is not None and (w1.control.listen, w1.control.port) == ("127.0.0.1", w1.sip.port)
    assert control_peers(w0, 0) == [(1, w1.sip.port)] and control_peers(w1, 1) == []
    assert control_peers(worker_config(parse_config(BASE + "workers: 2\n"), 0, 2), 0) == []  # no control endpoint
    announcer = parse_config(BASE + "workers: {count: 2, when_full: {reply: announcement}}\n"
                                    "control: {token_env: VG_TEST_TOKEN}\n")
    assert worker_config(announcer, 2, 2).control is None  # the announcer holds no call worth a pcap
    assert control_peers(worker_config(announcer, 0, 2), 0) == [(1, worker_config(announcer, 1, 2).sip.port)]


def test_asking_a_worker_that_does_not_listen_is_an_oserror():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(OSError):
        ask_worker(port, "c1@host", "token")
