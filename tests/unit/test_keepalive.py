"""Trunk OPTIONS keepalives: when pings go, and what their answers say (telephony/keepalive.py)."""

from __future__ import annotations

from telephony.config import parse_config
from telephony.keepalive import Keepalive
from telephony.trunk_status import status_table
from tests.unit.test_trunks import _cfg, _issues


def test_pings_go_every_interval_one_at_a_time():
    ka = Keepalive("c", 5.0)
    assert ka.due(100.0)
    assert not ka.due(106.0), "a ping still waiting for its answer is not followed by another"
    ka.result(106.5, 200, True)
    assert ka.due(106.5) and ka.sent == 2  # the interval ran out while the first waited
    ka.result(106.6, 200, True)
    assert not ka.due(110.0) and ka.due(111.5)


def test_state_changes_are_reported_once_with_code_and_round_trip():
    ka = Keepalive("c", 1.0)
    ka.due(0.0)
    assert ka.result(0.012, 200, True) == [
        {"trunk": "c", "state": "up", "code": 200, "rtt_ms": 12.0, "sent": 1, "answered": 1}]
    ka.due(1.0)
    assert ka.result(1.01, 404, True) == [], "any answer means the far end is alive"
    ka.due(2.0)
    down = ka.result(3.0, 408, False)
    assert down == [{"trunk": "c", "state": "down", "code": 408, "rtt_ms": None, "sent": 3, "answered": 2}]
    ka.due(4.0)
    assert ka.result(4.2, 503, False) == []
    ka.due(5.0)
    assert ka.result(5.003, 200, True)[0]["state"] == "up"


def test_a_ping_without_any_callback_expires_as_a_timeout():
    ka = Keepalive("c", 1.0)
    ka.due(10.0)
    assert ka.expire(11.9) == [], "within the timeout and its grace"
    assert ka.expire(12.0) == [{"trunk": "c", "state": "down", "code": 408, "rtt_ms": None, "sent": 1, "answered": 0}]
    assert ka.expire(20.0) == [] and ka.due(20.0), "expired: the next ping may go"


def test_timeout_is_the_interval_up_to_pjsips_own():
    assert Keepalive("c", 2.0).timeout_s == 2.0 and Keepalive("c", 300.0).timeout_s == 32.0


def test_status_table_shows_keepalives_only_where_a_trunk_pings():
    row = {"state": "registered", "code": 200, "reason": "OK", "refreshes": 0, "expires_at": None, "next_retry": None}
    doc = {"updated": 999.0, "pid": 1, "running": True,
           "trunks": [{"trunk": "a", **row, "keepalive": {"state": "up", "code": 200, "rtt_ms": 3.4}},
                      {"trunk": "b", **row, "keepalive": {"state": "down", "code": 408, "rtt_ms": None}},
                      {"trunk": "c", **row}]}
    lines = status_table(doc, ["a", "b", "c"], now=1000.0)
    assert lines[0].split()[-1] == "keepalive"
    assert lines[1].endswith("up 3 ms") and lines[2].endswith("down 408") and lines[3].endswith("-")
    del doc["trunks"][0]["keepalive"], doc["trunks"][1]["keepalive"]
    assert "keepalive" not in status_table(doc, ["a"], now=1000.0)[0]


def test_a_keepalive_below_a_second_is_named_with_its_line(monkeypatch):
    text = _cfg(monkeypatch).replace("    transport: udp\n", "    transport: udp\n    keepalive_s: 0.2\n")
    assert any(i.startswith("vg.yaml:") and "keepalive_s" in i and "greater than or equal to 1" in i
               for i in _issues(text)), _issues(text)
    assert parse_config(text.replace("0.2", "15"), "vg.yaml").trunks["carrier"].keepalive_s == 15
