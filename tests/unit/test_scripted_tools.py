"""The scripted agent's `tool:` step through a real CallSession and CallMedia (fast simulated media clock) against a
real local HTTP webhook: keyed order number -> webhook -> spoken status; failures apologise and the flow goes on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter

from agents.config import AgentConfig
from agents.registry import make_factory
from agents.session import CallSession, SessionTimeouts
from agents.speech.tts import PromptCache
from agents.tools import ToolConfig
from media.frames import SILENCE
from media.pipeline import CallMedia
from tests.servers.webhook import Webhook

pytestmark = pytest.mark.timeout(60)

FLOW = """
type: scripted
voice: en
start: ask
nodes:
  ask:
    - say: "Please key in your order number, then press pound."
    - collect: order
      max_digits: 8
      timeout_s: 3
    - tool: order_status
      args: {order_id: "{order}"}
      save: lookup
      on_error: failed
    - branch: lookup_status
      cases: {shipped: shipped}
      default: other
  shipped:
    - say: "Your order {order} has shipped, it arrives {lookup_eta}."
    - hangup: shipped
  other:
    - say: "Your order {order} is {lookup_status}."
    - hangup: other
  failed:
    - say: "Let us try again later."
    - hangup: failed
"""
KEYS = [(0.1, "1"), (0.2, "2"), (0.3, "3"), (0.4, "4"), (0.5, "#")]


def order_tool(url: str, **kw: Any) -> ToolConfig:
    return ToolConfig.model_validate({
        "description": "Look up an order", "http": {"url": url + "/orders/{order_id}", "timeout_s": 1.0},
        "parameters": {"type": "object", "required": ["order_id"],
                       "properties": {"order_id": {"type": "string", "pattern": "^[0-9]{4,8}$"}}}, **kw})


class Actions:
    def __init__(self) -> None:
        self.hung_up = asyncio.Event()

    def hangup(self) -> None:
        self.hung_up.set()

    def transfer(self, uri: str, attended: bool = False) -> None:
        raise AssertionError("no transfer in this flow")

    def send_dtmf(self, digits: str) -> None:
        raise AssertionError("no DTMF out in this flow")


async def run_call(tools: dict[str, ToolConfig], keys: list[tuple[float, str]], flow: str = FLOW
                   ) -> tuple[CallSession, list[dict[str, Any]]]:
    cfg = TypeAdapter(AgentConfig).validate_python(yaml.safe_load(flow))
    prompts = PromptCache()
    factory = make_factory("t", cfg, prompts, tools=tools)
    await factory.prepare()
    logs: list[dict[str, Any]] = []
    session: CallSession
    media = CallMedia(lambda ev: session.on_media_event(ev))
    actions = Actions()
    session = CallSession("c1", "4930123", "100", factory, media, actions, prompts,
                          lambda name, **f: logs.append({"event": name, **f}), SessionTimeouts())
    session.sip_headers = {"P-Asserted-Identity": "<sip:+4930555@carrier.example>"}

    async def clock() -> None:
        t, started = 0.0, None
        while True:
            if media.next_outbound(t) != SILENCE and started is None:
                started = t
            media.on_inbound(t, SILENCE)
            for at, digit in list(keys):
                if started is not None and t - started >= at:
                    keys.remove((at, digit))
                    session.on_dtmf(digit)
            t += 0.02
            await asyncio.sleep(0.002)

    clk = asyncio.create_task(clock())
    run = asyncio.create_task(session.run())
    await asyncio.wait_for(actions.hung_up.wait(), 30)
    session.on_hangup("test")
    await asyncio.wait_for(run, 5)
    clk.cancel()
    return session, logs


def said(logs: list[dict[str, Any]]) -> list[str]:
    return [e["text"] for e in logs if e["event"] == "agent_say"]


def tool_records(session: CallSession) -> list[dict[str, Any]]:
    return [t for t in session.record.turns if "tool" in t]


def test_keyed_order_number_reaches_the_webhook_and_the_status_is_spoken() -> None:
    with Webhook(reply={"status": "shipped", "eta": "on Friday"}) as hook:
        session, logs = asyncio.run(run_call({"order_status": order_tool(hook.url)}, list(KEYS)))
    (seen,) = hook.requests
    assert seen.path == "/orders/1234"
    assert seen.headers["x-voicegate-caller"] == "4930555" and seen.headers["x-voicegate-caller-verified"] == "true"
    assert said(logs)[-1] == "Your order 1234 has shipped, it arrives on Friday."
    assert session.record.end_reason == "shipped"
    (rec,) = tool_records(session)
    assert rec["tool"] == "order_status" and rec["arguments"] == {"order_id": "1234"} and rec["ok"]
    assert rec["latency_ms"] > 0 and rec["result_chars"] > 0 and rec["error"] is None


@pytest.mark.parametrize(("status", "raw", "delay"), [(500, None, 0.0), (200, b"not json", 0.0), (200, None, 2.0)])
def test_a_failing_webhook_gets_the_apology_and_the_flow_goes_on(status: int, raw: bytes | None,
                                                                  delay: float) -> None:
    with Webhook(status=status, raw=raw, delay_s=delay) as hook:
        session, logs = asyncio.run(run_call({"order_status": order_tool(hook.url)}, list(KEYS)))
    assert said(logs)[-2:] == ["Sorry, I could not look that up right now.", "Let us try again later."]
    assert session.record.end_reason == "failed"
    assert tool_records(session)[0]["error"]


def test_a_slow_webhook_gets_the_filler_then_the_answer() -> None:
    with Webhook(reply={"status": "packed"}, delay_s=0.8) as hook:
        tool = order_tool(hook.url, filler_after_s=0.2, filler="One moment while I check.")
        session, logs = asyncio.run(run_call({"order_status": tool}, list(KEYS)))
    assert said(logs)[-2:] == ["One moment while I check.", "Your order 1234 is packed."]


def test_arguments_failing_the_schema_make_no_request() -> None:
    with Webhook(reply={"status": "shipped"}) as hook:
        session, logs = asyncio.run(run_call({"order_status": order_tool(hook.url)}, [(0.1, "1"), (0.2, "#")]))
    assert hook.requests == []
    assert said(logs)[-1] == "Let us try again later."
    assert "order_id" in tool_records(session)[0]["error"]


CANCEL_FLOW = """
type: scripted
voice: en
start: ask
nodes:
  ask:
    - say: "Please key in your order number, then press pound."
    - collect: order
      max_digits: 8
      timeout_s: 3
    - tool: cancel_order
      args: {order_id: "{order}"}
      save: cancel
    - branch: cancel
      cases: {ok: done, cancelled: kept}
      default: kept
  done:
    - say: "Order {order} is {cancel_status}."
    - hangup: done
  kept:
    - say: "Your order stays as it is."
    - hangup: kept
"""


def test_side_effect_tools_run_only_after_the_caller_confirms() -> None:
    with Webhook(reply={"status": "cancelled"}) as hook:
        tool = order_tool(hook.url, side_effects=True, confirm="Press 1 to cancel order {order}.")
        _, logs = asyncio.run(run_call({"cancel_order": tool}, [*KEYS, (1.0, "2")], CANCEL_FLOW))
        assert hook.requests == []
        assert said(logs)[-2:] == ["Press 1 to cancel order 1234.", "Your order stays as it is."]
        _, logs = asyncio.run(run_call({"cancel_order": tool}, [*KEYS, (1.0, "1")], CANCEL_FLOW))
    assert len(hook.requests) == 1 and said(logs)[-1] == "Order 1234 is cancelled."
