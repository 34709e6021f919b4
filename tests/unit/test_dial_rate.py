"""Outbound calls per trunk and minute (`max_calls_per_min`)."""

from __future__ import annotations

import pytest

from telephony.config import ConfigError, parse_config
from telephony.dial_rate import DialRate

CONFIG = """\
agents:
  e: {type: echo}
routes:
  - {match: "*", agent: e}
trunks:
  carrier:
    registrar: sip:127.0.0.1:5090
    register: false
    username: vg
    password_env: VG_RATE_PW
    allowed: ['\\+4930\\d+']
    max_calls_per_min: LIMIT
"""


def test_a_trunk_places_at_most_its_limit_in_any_minute():
    rate = DialRate()
    assert [rate.take("carrier", 3, t) for t in (0.0, 10.0, 20.0)] == [0.0, 0.0, 0.0]
    assert rate.take("carrier", 3, 30.0) == pytest.approx(30.0)  # the call at 0 s leaves the window at 60 s
    assert rate.take("other", 3, 30.0) == 0.0  # per trunk
    assert rate.take("carrier", 3, 60.0) == 0.0
    assert rate.take("carrier", 3, 61.0) == pytest.approx(9.0)  # refusals were not counted
    assert all(rate.take("carrier", None, 61.0) == 0.0 for _ in range(100))


def test_the_limit_is_checked_with_its_line(monkeypatch):
    monkeypatch.setenv("VG_RATE_PW", "pw")
    assert parse_config(CONFIG.replace("LIMIT", "5")).trunks["carrier"].max_calls_per_min == 5
    with pytest.raises(ConfigError) as e:
        parse_config(CONFIG.replace("LIMIT", "0"), "vg.yaml")
    assert str(e.value.issues[0]).startswith("vg.yaml:12: trunks.carrier.max_calls_per_min: Input should be")
