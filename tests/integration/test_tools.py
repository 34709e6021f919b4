"""Business tools on a real SIP call: the pjsua2 test caller keys an order number into the `orders` flow of the
shipped voicegate.yaml, whose tool calls a local HTTP webhook; the gateway speaks the status, or apologises and goes
on when the webhook fails. The same lookup through a cascaded agent whose LLM (the local chat-completions server)
calls the tool. Also the example order service of examples/order_status."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from examples.order_status.server import make_server
from tests import audio
from tests.integration.peers import Gateway, call, free_port, gateway_config, start_gateway
from tests.servers.llm import LlmServer, text_reply, tool_reply
from tests.servers.webhook import Webhook

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def hook() -> Iterator[Webhook]:
    with Webhook(reply={"found": True, "status": "shipped", "eta": "on Friday"}) as h:
        yield h


@pytest.fixture(scope="module")
def llm() -> Iterator[LlmServer]:
    with LlmServer() as server:
        yield server


@pytest.fixture(scope="module")
def gw(hook: Webhook, llm: LlmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port = free_port()
    cfg = yaml.safe_load(gateway_config(port))
    cfg["agents"]["shop"] = {"type": "cascaded", "tools": ["order_status"],
                             "llm": {"base_url": llm.base_url, "model": "test-model", "api_key_env": None,
                                     "greeting": "Hi.", "first_token_timeout_s": 2.0}}
    cfg["routes"].insert(0, {"match": "shop", "agent": "shop"})
    tool = cfg["tools"]["order_status"]
    tool["http"]["url"] = hook.url + "/orders/{order_id}"
    tool["http"]["timeout_s"] = 1.0
    tool["http"]["retries"] = 0
    tool["filler_after_s"] = 0.3
    cfg["routes"].insert(0, {"match": "orders", "agent": "orders"})
    gw = start_gateway(yaml.safe_dump(cfg), tmp_path_factory.mktemp("gw-tools"), port)
    yield gw
    assert gw.stop() == 0


def order_call(gw: Gateway, hook: Webhook, keys: str = "1001#", duration: float = 14.0) -> tuple[str, list[str]]:
    """Call the orders route, key `keys` (answer + 1 s, during the prompt); the call's id and what it said."""
    seen = len(gw.events("call_end"))
    res = call(f"sip:orders@127.0.0.1:{gw.port}", "--dtmf", f"{keys}@1.0", "--duration", str(duration))
    assert res["status"] == 200 and res["dtmf_sent"] == [keys]
    deadline = time.monotonic() + 15
    while not (ends := gw.events("call_end")[seen:]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ends, "no call_end for the call"
    end = ends[-1]
    said = [e["text"] for e in gw.events("agent_say") if e["call"] == end["call"]]
    return end["call"], said


def test_a_keyed_order_number_reaches_the_webhook_and_the_status_is_spoken(gw: Gateway, hook: Webhook) -> None:
    hook.requests.clear()
    hook.status, hook.raw, hook.delay_s = 200, None, 0.0
    call_id, said = order_call(gw, hook)
    assert [r.path for r in hook.requests] == ["/orders/1001"]
    assert hook.requests[0].headers["x-voicegate-call-id"] == call_id
    assert said[-1] == "Order 1001 is shipped. Delivery: on Friday."
    turns = [t for t in gw.wait_event("call_end", 5, call=call_id)["turns"] if t.get("tool")]
    assert turns and turns[0]["arguments"] == {"order_id": "1001"} and turns[0]["ok"]


@pytest.mark.parametrize(("status", "raw", "delay"), [(500, None, 0.0), (200, b"<html>", 0.0), (200, None, 3.0)])
def test_a_failing_webhook_gets_the_apology_and_the_flow_goes_on(gw: Gateway, hook: Webhook, status: int,
                                                                 raw: bytes | None, delay: float) -> None:
    hook.requests.clear()
    hook.status, hook.raw, hook.delay_s = status, raw, delay
    try:
        call_id, said = order_call(gw, hook)
    finally:
        hook.status, hook.raw, hook.delay_s = 200, None, 0.0
    assert said[-2:] == ["Sorry, I could not look that up right now.", "Please try again later. Goodbye."]
    assert gw.wait_event("call_end", 5, call=call_id)["reason"] == "tool_failed"
    if delay:
        assert "One moment while I check." in said  # the slow one got the filler first


def test_the_llm_calls_the_tool_and_the_caller_hears_its_answer(gw: Gateway, hook: Webhook, llm: LlmServer,
                                                                 tmp_path: Path) -> None:
    hook.requests.clear()
    llm.script(tool_reply([("call_1", "order_status", ['{"order_id": ', '"1001"}'])]),
               text_reply(["Order 1001 has shipped ", "and arrives on Friday."]))
    n0 = len(llm.requests)
    question = audio.piper("Where is my order one zero zero one?")
    wav = tmp_path / "ask.wav"
    audio.write_wav(wav, np.concatenate([np.zeros(int(2.5 * 16000), np.float32), question,
                                         np.zeros(7 * 16000, np.float32)]))
    start = time.time()
    call(f"sip:shop@127.0.0.1:{gw.port}", "--play", str(wav), "--speak-at-s", "0", "--duration", "13", timeout=50)
    calls = [e["call"] for e in gw.events("call_incoming") if e["called"] == "shop"]
    turns = gw.wait_event("call_end", 15, call=calls[-1])["turns"]
    assert [r.path for r in hook.requests] == ["/orders/1001"]
    assert hook.requests[0].headers["x-voicegate-call-id"] == calls[-1]
    second = llm.requests[n0 + 1].body["messages"]
    assert second[-1]["role"] == "tool" and json.loads(second[-1]["content"])["result"]["status"] == "shipped"
    tool_turns = [t for t in turns if t.get("tool") == "order_status"]
    assert tool_turns and tool_turns[0]["ok"] and tool_turns[0]["arguments"] == {"order_id": "1001"}
    replies = [t["reply"] for t in turns if t.get("backend") == "cascaded" and "reply" in t]
    assert "Order 1001 has shipped and arrives on Friday." in replies, turns
    # one trace id through SIP, ASR, LLM, TTS and tools: every such event of the call names its Call-ID
    stages = ("asr_", "llm_", "tts_", "tool_")
    traced = [e for e in gw.events() if str(e.get("event", "")).startswith(stages) and e["ts"] >= start]
    assert {str(e["event"]).split("_")[0] + "_" for e in traced} == set(stages), traced
    assert all(e.get("call") == calls[-1] for e in traced), [e for e in traced if e.get("call") != calls[-1]]


def test_the_example_order_service_answers_from_sqlite(tmp_path: Path) -> None:
    server = make_server(0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/orders/"
        req = urllib.request.Request(base + "1001", headers={"X-Voicegate-Caller": "4930123456",
                                                             "X-Voicegate-Caller-Verified": "true"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.load(r) == {"found": True, "order_id": "1001", "status": "shipped", "eta": "on Friday",
                                    "items": 2, "callers_own": True}
        with urllib.request.urlopen(base + "9999", timeout=5) as r:
            assert json.load(r) == {"found": False, "order_id": "9999"}
    finally:
        server.shutdown()
        server.server_close()
