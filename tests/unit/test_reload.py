"""What a SIGHUP reload takes from a new config: sections, agents to rebuild, trunks whose accounts change."""

from __future__ import annotations

import pytest

from telephony.config import Config, parse_config
from telephony.reload import ReloadRefusedError, agent_changes, merge, trunk_changes

BASE = """\
sip: {{port: {port}}}
agents:
  bot: {{type: echo}}
  other: {{type: echo}}
routes:
  - {{match: "*", agent: {route}}}
transports:
  audiosocket: {{agent: other, port: 9300}}
trunks:
  carrier:
    registrar: sip:sip.example.com
    username: vg
    password_env: VG_RL_PW
    allowed: {allowed}
    expiry_s: {expiry}
"""


def _cfg(monkeypatch: pytest.MonkeyPatch, port: int = 5060, route: str = "bot", allowed: str = "['1']",
         expiry: int = 300, extra: str = "") -> Config:
    monkeypatch.setenv("VG_RL_PW", "pw")
    return parse_config(BASE.format(port=port, route=route, allowed=allowed, expiry=expiry) + extra, "vg.yaml")


def test_routes_agents_and_trunks_are_taken_other_sections_wait_for_a_restart(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    running = _cfg(monkeypatch)
    merged, restart = merge(running, _cfg(monkeypatch, port=5070, route="other", allowed="['2']"))
    assert merged.routes[0].agent == "other" and merged.trunks["carrier"].allowed == ["2"]
    assert merged.sip.port == 5060 and restart == ["sip"]


def test_a_kept_section_naming_a_removed_agent_refuses_the_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    running = _cfg(monkeypatch)
    new = running.model_copy(update={"agents": {"bot": running.agents["bot"]}})
    with pytest.raises(ReloadRefusedError, match="audiosocket.agent names unknown agent 'other'"):
        merge(running, new)


def test_only_account_settings_replace_a_trunks_accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    running = _cfg(monkeypatch)
    assert trunk_changes(running, _cfg(monkeypatch, allowed="['3', '4']")) == ([], [])
    assert trunk_changes(running, _cfg(monkeypatch, expiry=60)) == (["carrier"], ["carrier"])
    assert trunk_changes(running, _cfg(monkeypatch, allowed="[]")) == (["carrier"], ["carrier"])
    info = running.trunks["carrier"].model_copy(update={"dtmf_mode": "info"})  # read per call: accounts stay
    assert trunk_changes(running, running.model_copy(update={"trunks": {"carrier": info}})) == ([], [])
    assert agent_changes(running, _cfg(monkeypatch, extra="spend: {}\n")) == []
