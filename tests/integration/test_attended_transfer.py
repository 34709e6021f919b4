"""Attended transfer (telephony/consult.py): the scripted agent's `transfer` with `attended: true` calls the
target (a pjsua2 answerer), and once it answers REFERs the caller (the pjsua2 test phone, carrying REFERs out)
with Replaces; the caller's INVITE takes the consultation over at the target, the gateway hangs up. A busy target:
the caller is never REFERred and the agent goes on. A blind transfer to the same target: the caller's own INVITE
reaches it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.integration.peers import ROOT, Gateway, call, free_port, gateway_config, start_gateway

TARGET = free_port()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port = free_port()
    agents = {"att": {"type": "scripted", "voice": "en", "start": "a", "nodes": {"a": [
        {"say": "Connecting you."},
        {"transfer": f"sip:desk@127.0.0.1:{TARGET}", "attended": True, "timeout_s": 25},
        {"say": "Sorry, nobody took the call."}, {"hangup": "transfer_failed"}]}},
              "blind": {"type": "scripted", "voice": "en", "start": "a", "nodes": {"a": [
                  {"say": "Connecting you."}, {"transfer": f"sip:desk@127.0.0.1:{TARGET}"}]}}}
    routes = [{"match": "att", "agent": "att"}, {"match": "blind", "agent": "blind"}]
    cfg = yaml.safe_load(gateway_config(port, agents=agents, routes=routes))
    g = start_gateway(yaml.safe_dump(cfg), tmp_path_factory.mktemp("gw-att"), port)
    yield g
    assert g.stop() == 0, "\n".join(g.lines[-20:])


def answerer(*args: str) -> subprocess.Popen[str]:
    """The target, answering at TARGET (for 30 s at most); returns once it listens."""
    target = subprocess.Popen([sys.executable, "-m", "tests.integration.answerer", str(TARGET), "30", *args],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert target.stdout is not None
    ready = next(ln for ln in target.stdout if ln.startswith("{"))  # pjlib prints its banner first
    assert json.loads(ready) == {"ready": TARGET}
    return target


def events(target: subprocess.Popen[str]) -> list[dict[str, object]]:
    """What the target saw (it is stopped: the caller's call is over, and every line is flushed as it happens)."""
    target.kill()
    out, _ = target.communicate(timeout=10)
    return [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]


def transferred_call(gw: Gateway, user: str, *answerer_args: str) -> tuple[dict[str, Any], list[dict[str, object]]]:
    """The caller (accepting transfers) calls `user` while the target answers as told: its result, and what the
    target saw."""
    target = answerer(*answerer_args)
    try:
        res = call(f"sip:{user}@127.0.0.1:{gw.port}", "--accept-transfer", "--duration", "8")
        seen = events(target)
    finally:
        target.kill()
    return res, seen


def test_the_caller_is_transferred_to_the_answered_target_replacing_the_consultation(gw: Gateway):
    res, seen = transferred_call(gw, "att")
    print("\ncaller:", res["refer_to"], "target:", seen)
    end = gw.wait_event("call_end", 10, agent="att")
    consult = gw.wait_event("transfer_consult", 1, call=end["call"])
    assert res["remote_hangup"] and len(res["refer_to"]) == 1 and "Replaces=" in res["refer_to"][0], res
    assert end["reason"] == f"sip:desk@127.0.0.1:{TARGET}".join(("transfer:", "")), end
    assert gw.wait_event("transfer_result", 1, call=end["call"])["code"] == 200
    incoming = [e["incoming"] for e in seen if "incoming" in e]
    replaced = [e for e in seen if "replaced" in e]
    assert incoming == [consult["consult"]], seen  # the gateway's consultation came in; the caller's replaced it
    assert replaced and replaced[0]["replaced"] == consult["consult"], seen


def test_a_busy_target_is_not_transferred_to_and_the_agent_goes_on(gw: Gateway):
    res, _ = transferred_call(gw, "att", "--code", "486")
    assert res["refer_to"] == [] and res["remote_hangup"], res
    end = gw.wait_event("call_end", 10, agent="att", reason="transfer_failed")
    assert gw.wait_event("transfer_result", 1, call=end["call"])["code"] == 486
    said = [e["text"] for e in gw.events("agent_say") if e["call"] == end["call"]]
    assert said == ["Connecting you.", "Sorry, nobody took the call."], said


def test_a_blind_transfer_brings_the_caller_to_the_answering_target(gw: Gateway):
    res, seen = transferred_call(gw, "blind")
    end = gw.wait_event("call_end", 10, agent="blind")
    assert res["refer_to"] == [f"sip:desk@127.0.0.1:{TARGET}"] and res["remote_hangup"], res
    assert end["reason"] == f"transfer:sip:desk@127.0.0.1:{TARGET}", end
    assert gw.wait_event("transfer_result", 1, call=end["call"])["code"] == 200
    incoming = [e for e in seen if "incoming" in e]
    confirmed = [e["confirmed"] for e in seen if "confirmed" in e]
    assert len(incoming) == 1 and incoming[0]["incoming"] != end["call"], seen  # the caller's new call, not ours
    assert confirmed == [incoming[0]["incoming"]], seen  # the target answered it and the caller ACKed
