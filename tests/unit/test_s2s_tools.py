"""Business tools through both speech-to-speech backends, against their local protocol servers and a real local HTTP
webhook: the model's function call reaches the webhook with its arguments, the result goes back in the vendor's
format and the model answers; a failing webhook gets the tool's apology; a slow one its filler."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from agents.base import Dtmf
from agents.openai_realtime import OpenAIRealtimeAgent, OpenAIRealtimeConfig
from agents.tools import ToolConfig
from tests import audio
from tests.servers.gemini_live import GeminiLiveServer, Reply
from tests.servers.openai_realtime import RealtimeServer, speak, tool
from tests.servers.webhook import Webhook
from tests.unit.conftest import KEY_ENV
from tests.unit.test_gemini_live import call as gemini_call
from tests.unit.test_openai_realtime import STOP_S, FakeCall, _run

ORDER = {"type": "object", "required": ["order_id"],
         "properties": {"order_id": {"type": "string", "pattern": "^[0-9]{4,8}$"}}}
APOLOGY = "Sorry, I could not look that up right now."


def order_tool(url: str, **kw: Any) -> ToolConfig:
    return ToolConfig.model_validate({"description": "Look up an order", "parameters": ORDER,
                                      "http": {"url": url + "/orders/{order_id}", "timeout_s": 1.0}, **kw})


# -- OpenAI Realtime ----------------------------------------------------------------------------------------

@dataclass
class Call(FakeCall):
    trunk: str = ""
    digits: str = "1234"


def drive(rt: RealtimeServer, tools: dict[str, ToolConfig], call: Call, until: Any, timeout: float = 10.0) -> bool:
    cfg = OpenAIRealtimeConfig(type="openai_realtime", url=rt.url, api_key_env=KEY_ENV,
                               tools=("end_call", *tools))

    async def main() -> bool:
        tasks = [asyncio.create_task(call.clock()),
                 asyncio.create_task(OpenAIRealtimeAgent(cfg, tools=tools).run(call))]
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=STOP_S)
        return bool(until())

    return _run(main())


@pytest.mark.timeout(60)
def test_realtime_function_call_reaches_the_webhook_and_the_model_answers(rt: RealtimeServer) -> None:
    rt.script(tool("order_status", {"order_id": "1234"}), speak("Your order has shipped."))
    call = Call()
    with Webhook(reply={"status": "shipped"}) as hook:
        assert drive(rt, {"order_status": order_tool(hook.url)}, call,
                     lambda: sum(r.status == "completed" for r in rt.responses) >= 2)
    assert [r.path for r in hook.requests] == ["/orders/1234"]
    assert hook.requests[0].headers["x-voicegate-call-id"] == "test-call"
    offered = [e.event["session"]["tools"] for e in rt.received if e.type == "session.update"][0]
    assert [t["name"] for t in offered] == ["end_call", "order_status"] and offered[1]["parameters"] == ORDER
    (out,) = rt.function_outputs
    assert json.loads(out["output"]) == {"ok": True, "result": {"status": "shipped"}}
    assert rt.responses[1].by == "client" and rt.violations == []
    assert [t for t in call.turns if t.get("tool") == "order_status" and "latency_ms" in t][0]["ok"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("status", "raw", "delay"), [(500, None, 0.0), (200, b"[1,", 0.0), (200, None, 2.0)])
def test_realtime_failing_webhook_gets_the_apology_and_no_new_response(rt: RealtimeServer, status: int,
                                                                       raw: bytes | None, delay: float) -> None:
    rt.script(tool("order_status", {"order_id": "1234"}))
    call = Call()
    with Webhook(status=status, raw=raw, delay_s=delay) as hook:
        assert drive(rt, {"order_status": order_tool(hook.url, filler_after_s=5.0)}, call,
                     lambda: bool(rt.function_outputs))
        time.sleep(0.3)
    assert [text for _, text in call.said] == [APOLOGY]
    assert json.loads(rt.function_outputs[0]["output"])["ok"] is False
    assert len(rt.responses) == 1 and rt.violations == []


@pytest.mark.timeout(60)
def test_realtime_slow_webhook_gets_the_filler_and_bad_arguments_no_request(rt: RealtimeServer) -> None:
    rt.script(tool("order_status", {"order_id": "1234"}), speak("Shipped."))
    call = Call()
    with Webhook(reply={"status": "shipped"}, delay_s=0.6) as hook:
        assert drive(rt, {"order_status": order_tool(hook.url, filler_after_s=0.1, filler="One moment.")}, call,
                     lambda: len(rt.function_outputs) == 1)
    assert [text for _, text in call.said] == ["One moment."]
    rt.reset()
    rt.script(tool("order_status", {"order_id": "what"}))
    call = Call()
    with Webhook(reply={"status": "shipped"}) as hook:
        assert drive(rt, {"order_status": order_tool(hook.url)}, call, lambda: bool(rt.function_outputs))
    assert hook.requests == [] and "order_id" in json.loads(rt.function_outputs[0]["output"])["error"]


@pytest.mark.timeout(60)
def test_realtime_side_effect_tool_waits_for_the_callers_key(rt: RealtimeServer) -> None:
    rt.script(tool("order_status", {"order_id": "1234"}), speak("It is cancelled."))
    call = Call()
    with Webhook(reply={"cancelled": True}) as hook:
        t = order_tool(hook.url, side_effects=True, confirm="Press 1 to cancel order {order_id}.")

        def until() -> bool:
            if call.said and not hook.requests and not call.dtmf:
                call.dtmf.append("pressed")  # once
                call.event(Dtmf("1"))
            return len(rt.function_outputs) == 1

        assert drive(rt, {"order_status": t}, call, until)
    assert [text for _, text in call.said] == ["Press 1 to cancel order 1234."]
    assert len(hook.requests) == 1
    assert json.loads(rt.function_outputs[0]["output"]) == {"ok": True, "result": {"cancelled": True}}


# -- Gemini Live --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gemini() -> Iterator[GeminiLiveServer]:
    with GeminiLiveServer() as s:
        yield s


@pytest.mark.timeout(60)
def test_gemini_function_call_reaches_the_webhook_and_a_failure_is_apologised(
        gemini: GeminiLiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import agents.registry  # the Gemini helper makes its factory without tools: give them by the config

    with Webhook(reply={"status": "shipped"}) as hook:
        tools = {"order_status": order_tool(hook.url)}
        real = agents.registry.GeminiLiveFactory
        monkeypatch.setattr("tests.unit.test_gemini_live.GeminiLiveFactory",
                            lambda name, cfg, prompts: real(name, cfg, prompts, tools))
        gemini.script(Reply("Let me look.", misbehave="tool_call", tools=(("order_status", {"order_id": "1234"}),
                                                                         ("order_status", {"order_id": "x"}))))
        c = gemini_call(gemini, 8.0, tools=["order_status"])
    assert [r.path for r in hook.requests] == ["/orders/1234"]
    [s] = c.sessions
    decl = [d for t in s.setup["tools"] for d in t["functionDeclarations"] if d["name"] == "order_status"]
    assert decl == [{"name": "order_status", "description": "Look up an order", "parametersJsonSchema": ORDER}]
    got = [(r["name"], r["response"]) for r in s.tool_responses]
    assert got[0] == ("order_status", {"ok": True, "result": {"status": "shipped"}})
    assert got[1][1]["ok"] is False and "order_id" in got[1][1]["error"]
    assert APOLOGY in [e["text"] for e in c.logs if e["event"] == "agent_say"]


@pytest.mark.timeout(60)
def test_gemini_cancelled_call_that_was_already_made_is_reported_as_context_not_repeated(
        gemini: GeminiLiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller talks while a POST runs; the server cancels the call. The POST is not cut off (it cannot be taken
    back), no toolResponse goes to the cancelled id, and the model is told the result as context."""
    import agents.registry

    question = audio.scale_to_db(audio.trim(audio.piper("No wait, stop, I want to keep it.")), -20.0)
    with Webhook(reply={"cancelled": True}, delay_s=2.5) as hook:
        tools = {"cancel_order": order_tool(hook.url, http={"url": hook.url + "/orders/{order_id}",
                                                            "method": "POST", "timeout_s": 5.0},
                                            filler_after_s=4.0)}
        real = agents.registry.GeminiLiveFactory
        monkeypatch.setattr("tests.unit.test_gemini_live.GeminiLiveFactory",
                            lambda name, cfg, prompts: real(name, cfg, prompts, tools))
        gemini.script(Reply("Okay.", misbehave="tool_call", tools=(("cancel_order", {"order_id": "1234"}),)),
                      Reply("Your order is cancelled."))
        c = gemini_call(gemini, 6.0, [(1.5, question)], tools=["cancel_order"])
    assert [(r.method, r.path) for r in hook.requests] == [("POST", "/orders/1234")]  # once, and not cut off
    [s] = c.sessions
    assert s.tool_responses == []  # the cancelled id gets none
    [cancelled] = gemini.when("tool_cancelled")
    kept = [t for t in s.texts if t.startswith("(The call cancel_order")]
    assert kept == ['(The call cancel_order({"order_id": "1234"}) was cancelled when the caller interrupted, but it '
                    'had already been made and cannot be undone. Its result: {"ok": true, "result": {"cancelled": '
                    'true}})'], s.texts
    [event] = c.events("gemini_tool_kept")
    assert event["name"] == "cancel_order" and event["ok"] is True
    assert [t["ok"] for t in c.session.record.turns if t.get("tool") == "cancel_order"] == [True]
