"""The toll-fraud guard on transfers: which targets a route's agent may send callers to, and what a refused
transfer does in a real CallSession (logged, recorded, TransferFailed(403) to the agent, no REFER)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agents.base import TransferFailed
from agents.session import CallSession
from agents.speech.tts import PromptCache
from media.pipeline import CallMedia
from telephony.config import ConfigError, load_config, parse_config
from telephony.transfer_guard import TransferGuard, configured_targets, guard_for, target_key

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """\
agents:
  desk:
    type: scripted
    start: a
    nodes:
      a:
        - transfer: "sip:desk@pbx.example.com;transport=tcp"
          headers: {X-Case: "{X-Customer-Id}"}
  model:
    type: openai_realtime
    api_key_env: VG_GUARD_KEY
    transfer_target: sip:operator@pbx.example.com
routes:
  - match: uk
    agent: model
    transfer_allowed: ["/^sip:\\\\+4420\\\\d+@pbx\\\\.example\\\\.com$/", "sip:desk@pbx.example.com"]
  - match: "*"
    agent: desk
"""


def test_targets_are_compared_without_brackets_parameters_and_headers():
    assert target_key("<sip:desk@pbx.example.com:5060;transport=tcp?X-Case=42>") == "sip:desk@pbx.example.com:5060"
    assert target_key("tel:+442071234567;phone-context=x") == "tel:+442071234567"


def test_without_transfer_allowed_only_the_agents_own_targets_pass(monkeypatch):
    monkeypatch.setenv("VG_GUARD_KEY", "k")
    cfg = parse_config(CONFIG)
    assert configured_targets("desk", cfg.agents) == {"sip:desk@pbx.example.com"}
    guard = guard_for(cfg, "100", "desk")
    assert guard.refusal("sip:desk@pbx.example.com?X-Case=42") == ""
    assert guard.refusal("sip:+882123@evil.example") == (
        "sip:+882123@evil.example is not a transfer target of the agent's config (the route has no transfer_allowed)")


def test_transfer_allowed_is_the_whole_list_for_every_kind_of_request(monkeypatch):
    monkeypatch.setenv("VG_GUARD_KEY", "k")
    cfg = parse_config(CONFIG)
    guard = guard_for(cfg, "uk", "model")
    assert guard.refusal("sip:+442071234567@pbx.example.com") == ""
    assert guard.refusal("sip:desk@pbx.example.com") == ""
    # the agent's own default target is not on the route's list, a foreign host is not either
    assert guard.refusal("sip:operator@pbx.example.com") == (
        "sip:operator@pbx.example.com matches no transfer_allowed pattern of the call's route")
    assert guard.refusal("sip:+442071234567@pbx.example.com.evil.example")
    assert guard.refusal("sip:+4930123@pbx.example.com")


def test_the_shipped_assistant_may_transfer_to_its_dialogs_reception():
    cfg = load_config(ROOT / "voicegate.yaml")
    assert "sip:reception@pbx.example.com" in configured_targets("assistant", cfg.agents)


def test_a_bad_transfer_allowed_regex_is_named_with_its_line(monkeypatch):
    monkeypatch.setenv("VG_GUARD_KEY", "k")
    with pytest.raises(ConfigError) as e:
        parse_config(CONFIG.replace('"sip:desk@pbx.example.com"]', '"/+[/"]'), "vg.yaml")
    assert [str(i) for i in e.value.issues][0].startswith("vg.yaml:16: routes.0.transfer_allowed.1: bad regular")


class Actions:
    def __init__(self) -> None:
        self.refers: list[str] = []

    def hangup(self) -> None:
        pass

    def transfer(self, uri: str, attended: bool = False) -> None:
        self.refers.append(uri)

    def send_dtmf(self, digits: str) -> None:
        pass


def test_a_refused_transfer_is_logged_recorded_and_reported_to_the_agent_without_a_refer():
    async def run() -> tuple[CallSession, Actions, list[dict[str, Any]], object, bool, bool]:
        logs: list[dict[str, Any]] = []
        actions = Actions()
        guard = TransferGuard(patterns=("/^sip:\\+4420/",))
        session = CallSession("c1", "caller", "uk", None, CallMedia(lambda ev: None), actions,  # type: ignore[arg-type]
                              PromptCache(), lambda name, **f: logs.append({"event": name, **f}),
                              transfer_guard=guard.refusal)
        refused = await session.transfer("sip:+882123@evil.example")
        ev = await session.next_event(1.0)
        sent = await session.transfer("sip:+442071234567@pbx.example.com")
        return session, actions, logs, ev, refused, sent

    session, actions, logs, ev, refused, sent = asyncio.run(run())
    assert refused is False and sent is True and ev == TransferFailed(403)
    assert actions.refers == ["sip:+442071234567@pbx.example.com"]  # only the allowed one went out
    why = "sip:+882123@evil.example matches no transfer_allowed pattern of the call's route"
    assert logs[0] == {"event": "transfer_refused", "call": "c1", "target": "sip:+882123@evil.example", "reason": why}
    assert session.record.transfers_refused == [{"target": "sip:+882123@evil.example", "reason": why}]
    assert session.record.end_reason == "transfer:sip:+442071234567@pbx.example.com"
