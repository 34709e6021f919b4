"""The tool runner against a real local HTTP webhook: schema refusal, arguments and context sent, failures, retries,
trimming, secrets from the environment, Python entry points."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import ValidationError

from agents.tools import ToolConfig, ToolContext, ToolRunner, caller_identity, trim_json
from tests.servers.webhook import Webhook

pytestmark = pytest.mark.timeout(30)

CTX = ToolContext("call-1", "4930123", True, trunk="carrier", language="en", digits="1234#")
ORDER_SCHEMA = {"type": "object", "properties": {"order_id": {"type": "string", "pattern": "^[0-9]{4,8}$"}},
                "required": ["order_id"], "additionalProperties": False}


def tool(url: str, **kw: Any) -> ToolConfig:
    http = {"url": url + "/orders/{order_id}", **kw.pop("http", {})}
    return ToolConfig.model_validate({"description": "Order status", "parameters": ORDER_SCHEMA, "http": http, **kw})


def run(t: ToolConfig, args: dict[str, Any], ctx: ToolContext = CTX, name: str = "order_status") -> Any:
    async def go() -> Any:
        runner = ToolRunner({name: t}, [name])
        try:
            return await runner.run(name, args, ctx)
        finally:
            await runner.aclose()

    return asyncio.run(go())


def test_get_fills_the_url_and_sends_the_call_context() -> None:
    with Webhook(reply={"status": "shipped"}) as hook:
        r = run(tool(hook.url), {"order_id": "1234"})
    assert r.ok and r.data == {"status": "shipped"} and r.error == ""
    (seen,) = hook.requests
    assert (seen.method, seen.path) == ("GET", "/orders/1234")
    assert seen.headers["x-voicegate-call-id"] == "call-1"
    assert seen.headers["x-voicegate-caller"] == "4930123"
    assert seen.headers["x-voicegate-caller-verified"] == "true"
    assert r.record({"order_id": "1234"})["result_chars"] == len(json.dumps({"status": "shipped"}))


def test_post_sends_arguments_and_context_as_json() -> None:
    with Webhook(reply={"ok": 1}) as hook:
        t = ToolConfig.model_validate({"description": "d", "parameters": ORDER_SCHEMA,
                                       "http": {"method": "POST", "url": hook.url + "/lookup"}})
        assert run(t, {"order_id": "5678"}).ok
    body = hook.requests[0].body
    assert body["arguments"] == {"order_id": "5678"}
    assert body["context"]["digits"] == "1234#" and body["context"]["call_id"] == "call-1"


def test_arguments_failing_the_schema_are_refused_before_any_request() -> None:
    with Webhook() as hook:
        r = run(tool(hook.url), {"order_id": "12ab"})
        r2 = run(tool(hook.url), {})
    assert not r.ok and not r.requested and "order_status" in r.error and "order_id" in r.error
    assert "required" in r2.error
    assert hook.requests == []


@pytest.mark.parametrize(("status", "raw", "delay", "words"), [
    (500, None, 0.0, "HTTP 500"), (200, b"<html>oops", 0.0, "invalid JSON"), (200, None, 1.0, "within 0.3 s"),
    (404, None, 0.0, "HTTP 404"),
])
def test_failures_name_the_tool(status: int, raw: bytes | None, delay: float, words: str) -> None:
    with Webhook(status=status, raw=raw, delay_s=delay) as hook:
        r = run(tool(hook.url, http={"timeout_s": 0.3}), {"order_id": "1234"})
    assert not r.ok and r.requested and "order_status" in r.error and words in r.error, r.error


def test_idempotent_calls_are_retried_others_refuse_retries() -> None:
    with Webhook(status=503) as hook:
        r = run(tool(hook.url, http={"retries": 2}), {"order_id": "1234"})
    assert not r.ok and len(hook.requests) == 3
    with pytest.raises(ValidationError, match="not idempotent"):
        ToolConfig.model_validate({"description": "d", "http": {"method": "POST", "url": "http://x", "retries": 1}})


def test_header_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_TOKEN", "s3cret")
    with Webhook(reply={}) as hook:
        t = tool(hook.url, http={"headers": {"Authorization": "Bearer ${ORDERS_TOKEN}"}})
        assert run(t, {"order_id": "1234"}).ok
        monkeypatch.delenv("ORDERS_TOKEN")
        r = run(t, {"order_id": "1234"})
    assert hook.requests[0].headers["authorization"] == "Bearer s3cret"
    assert not r.ok and "ORDERS_TOKEN" in r.error and len(hook.requests) == 1


def test_large_results_are_trimmed_to_valid_json() -> None:
    big = {"status": "shipped", "items": [{"sku": f"A{i}", "note": "x" * 50} for i in range(200)]}
    with Webhook(reply=big) as hook:
        r = run(tool(hook.url, max_result_chars=500), {"order_id": "1234"})
    assert r.ok and r.data["status"] == "shipped" and len(json.dumps(r.data)) <= 500
    assert r.result_chars == len(json.dumps(big))
    assert len(json.dumps(trim_json("y" * 5000, 100))) <= 100


def add(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    return {"sum": args["a"] + args["b"], "call": ctx.call_id}


async def boom(args: dict[str, Any], ctx: ToolContext) -> Any:
    raise RuntimeError("database down")


def test_python_entry_points() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
    t = ToolConfig.model_validate({"description": "d", "parameters": schema, "python": f"{__name__}:add"})
    assert run(t, {"a": 2, "b": 3}, name="add").data == {"sum": 5, "call": "call-1"}
    bad = ToolConfig.model_validate({"description": "d", "python": f"{__name__}:boom"})
    r = run(bad, {}, name="boom")
    assert not r.ok and "boom" in r.error and "database down" in r.error


def test_config_errors() -> None:
    with pytest.raises(ValidationError, match="exactly one implementation"):
        ToolConfig.model_validate({"description": "d"})
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        ToolConfig.model_validate({"description": "d", "python": "m:f", "parameters": {"type": "objekt"}})


def test_account_tools_need_a_network_identity() -> None:
    assert caller_identity("555", {"P-Asserted-Identity": "<sip:+4930999@carrier.example>"}, "") == ("4930999", True)
    assert caller_identity("555", {}, "carrier") == ("555", True)
    assert caller_identity("555", {}, "") == ("555", False)
    with Webhook(reply={}) as hook:
        r = run(tool(hook.url, verified_caller=True), {"order_id": "1234"},
                ToolContext("c", "555", caller_verified=False))
    assert not r.ok and "identity" in r.error and hook.requests == []


TOOL_CONFIG = """\
agents:
  ivr:
    type: scripted
    start: a
    nodes:
      a:
        - tool: {step_tool}
  bot:
    type: cascaded
    tools: [{bot_tool}]
    {llm}
routes:
  - match: "*"
    agent: ivr
tools:
  order_status:
    description: Look up an order
    parameters: {{type: object, properties: {{order_id: {{type: string}}}}}}
    http: {{url: "http://127.0.0.1:8080/orders/{{order_id}}", timeout_s: {timeout}}}
  cancel_order:
    description: Cancel an order
    side_effects: true
    http: {{method: POST, url: "http://127.0.0.1:8080/cancel"}}
"""


def config_issues(step_tool: str = "order_status", bot_tool: str = "order_status", timeout: str = "2",
                  llm: str = "llm: {base_url: 'http://127.0.0.1:9/v1', model: m}") -> list[str]:
    from telephony.config import ConfigError, parse_config

    text = TOOL_CONFIG.format(step_tool=step_tool, bot_tool=bot_tool, timeout=timeout, llm=llm)
    try:
        cfg = parse_config(text, "vg.yaml")
    except ConfigError as e:
        return [str(i) for i in e.issues]
    assert set(cfg.tools) == {"order_status", "cancel_order"}
    return []


def test_tools_in_the_config_file() -> None:
    assert config_issues() == []
    assert config_issues(step_tool="cancel_order") == []
    assert "agents.ivr.tools: no tool 'nope' in the top-level tools" in config_issues(step_tool="nope")[0]
    assert config_issues(bot_tool="cancel_order") == []  # the agent asks for a key before it runs
    assert "this agent has no llm" in config_issues(llm="")[0]
    (issue,) = config_issues(timeout="-1")
    assert issue.startswith("vg.yaml:19: tools.order_status.http.timeout_s"), issue


def test_only_the_offered_tools_run() -> None:
    async def go() -> str:
        runner = ToolRunner({"a": ToolConfig.model_validate({"description": "d", "python": f"{__name__}:add"})},
                            [])
        try:
            return (await runner.run("a", {"a": 1, "b": 2}, CTX)).error
        finally:
            await runner.aclose()

    assert asyncio.run(go()) == "tool 'a' is not offered to this agent"


def test_trimming_a_value_with_no_list_or_long_string_still_fits() -> None:
    value = {f"k{i}": '"q"' for i in range(100)}
    out = trim_json(value, 120)
    assert len(json.dumps(out, ensure_ascii=False)) <= 120 and out["truncated"].startswith('{"k0"')
