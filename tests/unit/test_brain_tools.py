"""The cascaded agent's LLM brain with business tools: the local chat-completions server emits the tool call, a real
local HTTP webhook answers, and the model's next request carries the result."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agents.base import Played
from agents.brain import Act, LlmBrain, Part, Say, UserTurn
from agents.llm import LlmClient, LlmConfig
from agents.tools import CallTools, ToolConfig, ToolRunner
from tests.servers.llm import LlmServer, text_reply, tool_reply
from tests.servers.webhook import Webhook

pytestmark = pytest.mark.timeout(30)


class Call:
    """What CallTools reads of a call, and the records it writes."""

    call_id, caller, called, trunk, digits = "c1", "4930123", "100", "carrier", "12"
    sip_headers: dict[str, str] = {}

    def __init__(self) -> None:
        self.turns: list[dict[str, Any]] = []
        self.said: list[str] = []

    def record_turn(self, turn: dict[str, Any]) -> None:
        self.turns.append(turn)

    async def say(self, text: str, interruptible: bool = True, voice: str | None = None) -> Played:
        self.said.append(text)  # only a confirmation prompt: the brain yields fillers as parts
        return Played(500, False)


def order_tool(url: str, **kw: Any) -> ToolConfig:
    http = {"url": url + "/orders/{order_id}", "timeout_s": 1.0, **kw.pop("http", {})}
    return ToolConfig.model_validate({
        "description": "Look up an order by its number", "http": http,
        "parameters": {"type": "object", "required": ["order_id"],
                       "properties": {"order_id": {"type": "string", "pattern": "^[0-9]{4,8}$"}}}, **kw})


ASK = tool_reply([("call_1", "order_status", ['{"order_', 'id": "1234"}'])])
ANSWER = text_reply(["Your order 1234 ", "has shipped."])


async def turn(brain: LlmBrain, text: str = "Where is my order 1234?") -> list[Part]:
    return [p async for p in brain.respond(UserTurn(text, "en", 0.9))]


def run(tool: ToolConfig, *replies: Any, turns: int = 1) -> tuple[list[list[Part]], LlmServer, Call]:
    call = Call()

    async def go(server: LlmServer) -> list[list[Part]]:
        brain = LlmBrain(LlmClient(LlmConfig(server.base_url, "m")), "sys", "hi", "Hmm.", 5.0, "Sorry, error.")
        runner = ToolRunner({"order_status": tool}, ["order_status"])
        brain.tools = CallTools(runner, call)
        try:
            return [await turn(brain) for _ in range(turns)]
        finally:
            await brain.close()
            await runner.aclose()

    with LlmServer() as server:
        server.script(*replies)
        out = asyncio.run(go(server))
    return out, server, call


def test_the_model_calls_the_webhook_and_speaks_the_status() -> None:
    with Webhook(reply={"status": "shipped"}) as hook:
        (parts,), server, call = run(order_tool(hook.url), ASK, ANSWER)
    assert parts == [Say("Your order 1234 has shipped.")]
    assert [r.path for r in hook.requests] == ["/orders/1234"]
    assert hook.requests[0].headers["x-voicegate-caller-verified"] == "true"  # the call came in on a trunk
    offered = [t["function"]["name"] for t in server.requests[0].body["tools"]]
    assert offered == ["transfer_call", "end_call", "send_dtmf", "pause_recording", "resume_recording", "order_status"]
    second = server.requests[1].body["messages"]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "order_status"
    assert second[-1] == {"role": "tool", "tool_call_id": "call_1",
                          "content": json.dumps({"ok": True, "result": {"status": "shipped"}})}
    assert call.turns[0]["tool"] == "order_status" and call.turns[0]["ok"]


@pytest.mark.parametrize(("status", "raw", "delay"), [(500, None, 0.0), (200, b"{oops", 0.0), (200, None, 2.0)])
def test_a_failing_webhook_gets_the_apology_and_no_second_request(status: int, raw: bytes | None,
                                                                   delay: float) -> None:
    with Webhook(status=status, raw=raw, delay_s=delay) as hook:
        (parts,), server, call = run(order_tool(hook.url, filler_after_s=5.0), ASK, ANSWER)
    assert parts == [Say("Sorry, I could not look that up right now.")]
    assert len(server.requests) == 1 and call.turns[0]["error"]


def test_a_slow_webhook_gets_the_filler_first() -> None:
    with Webhook(reply={"status": "shipped"}, delay_s=0.6) as hook:
        (parts,), _, call = run(order_tool(hook.url, filler_after_s=0.1, filler="Let me check."), ASK, ANSWER)
    assert parts == [Say("Let me check."), Say("Your order 1234 has shipped.")] and call.said == []


def test_arguments_failing_the_schema_are_refused_before_any_request() -> None:
    bad = tool_reply([("call_1", "order_status", ['{"order_id": "my order"}'])])
    with Webhook(reply={"status": "shipped"}) as hook:
        (parts,), server, call = run(order_tool(hook.url), bad, ANSWER)
    assert hook.requests == [] and parts == [Say("Sorry, I could not look that up right now.")]
    assert "order_id" in call.turns[0]["error"]


def test_a_barge_in_does_not_cancel_a_non_idempotent_call_and_its_answer_reaches_the_model() -> None:
    call = Call()

    async def go(server: LlmServer) -> None:
        brain = LlmBrain(LlmClient(LlmConfig(server.base_url, "m")), "sys", "hi", "Hmm.", 5.0, "Sorry.")
        runner = ToolRunner({"order_status": tool}, ["order_status"])
        brain.tools = CallTools(runner, call)
        task = asyncio.ensure_future(turn(brain))
        await asyncio.sleep(0.3)  # the webhook is working on it
        task.cancel()  # the caller talks over the filler: the agent cancels the reply
        await asyncio.gather(task, return_exceptions=True)
        assert await turn(brain, "Hello?") == [Say("Your order 1234 has shipped.")]
        await brain.close()
        await runner.aclose()

    with Webhook(reply={"cancelled": True}, delay_s=0.6) as hook, LlmServer() as server:
        tool = order_tool(hook.url, http={"method": "POST"})
        server.script(ASK, ANSWER)
        asyncio.run(go(server))
    assert len(hook.requests) == 1  # it finished: the POST was not cut off
    messages = server.requests[1].body["messages"]
    tool_msgs = [m for m in messages if m["role"] == "tool"]
    assert tool_msgs == [{"role": "tool", "tool_call_id": "call_1",
                          "content": json.dumps({"ok": True, "result": {"cancelled": True}})}]
    assert messages[-1] == {"role": "user", "content": "Hello?"}


@pytest.mark.parametrize("key", ["1", "2"])
def test_a_side_effect_tool_runs_only_after_the_caller_presses_1(key: str) -> None:
    call = Call()

    async def go(server: LlmServer) -> list[Part]:
        brain = LlmBrain(LlmClient(LlmConfig(server.base_url, "m")), "sys", "hi", "Hmm.", 5.0, "Sorry.")
        runner = ToolRunner({"order_status": tool}, ["order_status"])
        brain.tools = CallTools(runner, call)
        brain.tools.asks_confirmation = True

        async def press() -> None:
            while not call.said:
                await asyncio.sleep(0.01)
            assert brain.tools is not None and brain.tools.key(key)

        presser = asyncio.ensure_future(press())
        try:
            return await turn(brain, "Cancel order 1234.")
        finally:
            await presser
            await brain.close()
            await runner.aclose()

    with Webhook(reply={"cancelled": True}) as hook, LlmServer() as server:
        tool = order_tool(hook.url, http={"method": "POST"}, side_effects=True,
                          confirm="To cancel order {order_id}, press 1.")
        server.script(ASK, text_reply(["Done."]))
        parts = asyncio.run(go(server))
    assert call.said == ["To cancel order 1234, press 1."] and parts == [Say("Done.")]
    result = json.loads(server.requests[1].body["messages"][-1]["content"])
    if key == "1":
        assert len(hook.requests) == 1 and result == {"ok": True, "result": {"cancelled": True}}
    else:
        assert hook.requests == [] and result == {"ok": True, "result": {"done": False,
                                                                          "reason": "the caller did not confirm"}}


def test_the_recording_call_actions_become_acts_after_what_the_model_says() -> None:
    pause = tool_reply([("call_1", "pause_recording", ["{}"])])
    resume = tool_reply([("call_2", "resume_recording", ["{}"])])

    async def go(server: LlmServer) -> list[list[Part]]:
        brain = LlmBrain(LlmClient(LlmConfig(server.base_url, "m")), "sys", "hi", "Hmm.", 5.0, "Sorry, error.")
        try:
            return [await turn(brain, text) for text in ("I will read my card number now.", "Done.")]
        finally:
            await brain.close()

    with LlmServer() as server:
        server.script(pause, resume)
        first, second = asyncio.run(go(server))
    assert first == [Act("pause_recording")] and second == [Act("resume_recording")]


def call_actions(*replies: Any, transfer_default: str | None = None) -> tuple[list[Part], LlmServer]:
    """One caller turn of a brain with no business tools, against the scripted replies."""
    async def go(server: LlmServer) -> list[Part]:
        brain = LlmBrain(LlmClient(LlmConfig(server.base_url, "m")), "sys", "hi", "Hmm.", 5.0, "Sorry, error.",
                         transfer_default)
        try:
            return await turn(brain, "Please put me through.")
        finally:
            await brain.close()

    with LlmServer() as server:
        server.script(*replies)
        parts = asyncio.run(go(server))
    return parts, server


@pytest.mark.parametrize(("name", "args", "default", "act"), [
    ("transfer_call", '{"target": "sip:desk@example.com"}', None, Act("transfer", "sip:desk@example.com")),
    ("transfer_call", "{}", "sip:operator@example.com", Act("transfer", "sip:operator@example.com")),
    ("end_call", "{}", None, Act("hangup")),
    ("send_dtmf", '{"digits": "12#"}', None, Act("dtmf", "12#")),
])
def test_the_call_actions_become_acts(name: str, args: str, default: str | None, act: Act) -> None:
    parts, server = call_actions(tool_reply([("call_1", name, [args])]), transfer_default=default)
    assert parts == [act] and len(server.requests) == 1  # done: the model is not asked again this turn


def test_a_transfer_with_no_target_anywhere_is_a_tool_error_the_model_answers() -> None:
    parts, server = call_actions(tool_reply([("call_1", "transfer_call", ["{}"])]),
                                 text_reply(["I cannot transfer you right now."]))
    assert parts == [Say("I cannot transfer you right now.")]  # no Act: nothing to transfer to
    assert len(server.requests) == 2
    assert server.requests[1].body["messages"][-1] == {
        "role": "tool", "tool_call_id": "call_1",
        "content": json.dumps({"ok": False, "error": "no transfer target configured"})}


def test_transfer_headers_go_on_the_refer_to_and_a_forbidden_name_goes_back_to_the_model() -> None:
    forbidden = tool_reply([("call_1", "transfer_call", ['{"target": "sip:desk@pbx", "headers": {"Via": "x"}}'])])
    allowed = tool_reply([("call_2", "transfer_call",
                           ['{"target": "sip:desk@pbx", "headers": {"X-Case": "42 a", "User-to-User": "0a"}}'])])
    parts, server = call_actions(forbidden, allowed)
    assert parts == [Act("transfer", "sip:desk@pbx?X-Case=42%20a&User-to-User=0a")]
    refusal = server.requests[1].body["messages"][-1]
    assert refusal["role"] == "tool" and refusal["tool_call_id"] == "call_1", refusal
    assert "'Via' may not be sent on a transfer" in json.loads(refusal["content"])["error"], refusal
    spec = server.requests[0].body["tools"][0]["function"]
    assert spec["name"] == "transfer_call" and spec["parameters"]["properties"]["headers"]["type"] == "object"
