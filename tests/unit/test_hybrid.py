"""The hybrid agent's parts: its config (names resolved and checked), the S2S voice it picks, and the handover hook
of each S2S agent against its local protocol server (the conversation goes up as context, the last turn is answered
at once, no greeting)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from agents.base import Handover, ToolOutcome
from agents.brain import LlmBrain
from agents.config import HybridAgentConfig
from agents.gemini_live import GeminiLiveAgent, GeminiLiveFactory, handover_turns
from agents.hybrid import HANDOVER_NOTE, HybridFactory, _Tagged, handover_from
from agents.llm import LlmClient, LlmConfig
from agents.openai_realtime import OpenAIRealtimeAgent
from agents.registry import make_factory
from agents.speech.tts import PromptCache
from agents.tools import CallTools, ToolRunner
from telephony.config import ConfigError, parse_config
from tests.servers.gemini_live import GeminiLiveServer, Reply
from tests.servers.llm import LlmServer
from tests.servers.openai_realtime import RealtimeServer, speak
from tests.servers.webhook import Webhook
from tests.unit.test_brain_tools import ASK, order_tool, turn
from tests.unit.test_gemini_live import _call
from tests.unit.test_openai_realtime import KEY_ENV, FakeCall, config
from tests.unit.test_s2s_tools import Call

HANDOVER = Handover((("assistant", "Thanks for calling Harbour Hotel. How can I help?"),
                     ("user", "What time does the restaurant open?"),
                     ("assistant", "The restaurant opens at noon."),
                     ("user", "I want to speak to someone about a complaint.")), HANDOVER_NOTE)
ANSWER = "I am sorry to hear that. Tell me what happened."
TRIGGER = "I want to speak to someone about a complaint."


def gateway(**hybrid: Any) -> str:
    return yaml.safe_dump({
        "agents": {
            "front": {"type": "cascaded"},
            "rt": {"type": "openai_realtime", "api_key_env": None, "voice": "marin"},
            "hy": {"type": "hybrid", "cascade": "front", "s2s": "rt", **hybrid},
        },
        "routes": [{"match": "*", "agent": "hy"}],
    })


def test_a_hybrid_resolves_its_agents_and_picks_a_matching_voice() -> None:
    cfg = parse_config(gateway(escalate_when={"intents": ["person"], "vip_callers": ["+4930*"]},
                               budget={"max_usd": 1.0, "usd_per_min": 0.3}))
    hy = cfg.agents["hy"]
    assert isinstance(hy, HybridAgentConfig) and hy.budget is not None and hy.budget.min_minutes == 1.0
    f = make_factory("hy", hy, PromptCache(), cfg.agents)
    assert isinstance(f, HybridFactory) and f.s2s.cfg.voice == "cedar"  # piper's joe -> OpenAI's cedar
    assert f.dialog is not None and "person" in f.dialog.intents
    chosen = parse_config(gateway(s2s_voice="ash")).agents["hy"]
    f = make_factory("hy", chosen, PromptCache(), cfg.agents)
    assert isinstance(f, HybridFactory) and f.s2s.cfg.voice == "ash"


@pytest.mark.parametrize(("change", "message"), [
    ({"s2s": "nobody"}, "agents.hy.s2s: 'nobody' is not an openai_realtime or gemini_live agent"),
    ({"s2s": "front"}, "agents.hy.s2s: 'front' is not an openai_realtime or gemini_live agent"),
    ({"cascade": "rt"}, "agents.hy.cascade: 'rt' is not a cascaded agent"),
    ({"escalate_when": {"intents": ["refund"]}}, "the cascade's dialog has no intent 'refund'"),
    ({"escalate_when": {"vip_callers": ["/(/"]}}, "bad regular expression"),
    ({"budget": {"max_usd": 0, "usd_per_min": 0.3}}, "greater than 0"),
    ({"budget": {"max_usd": 1.0}}, "agents.hy.budget: no usd_per_min, and prices.s2s.openai_realtime is 0"),
])
def test_bad_hybrid_configs_are_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(gateway(**change))
    assert message in str(e.value), str(e.value)


def test_a_budget_without_a_rate_takes_the_s2s_prices() -> None:
    text = gateway(budget={"max_usd": 1.0})
    cfg = parse_config(text + "prices:\n  s2s:\n    openai_realtime: {in_per_min: 0.06, out_per_min: 0.24}\n")
    f = make_factory("hy", cfg.agents["hy"], PromptCache(), cfg.agents, cfg.prices)
    assert isinstance(f, HybridFactory) and f.cfg.budget is not None
    assert f.cfg.budget.usd_per_min == pytest.approx(0.30)


def test_an_inline_cascade_is_accepted() -> None:
    cfg = parse_config(gateway(cascade={"type": "cascaded", "voice": "en"}))
    f = make_factory("hy", cfg.agents["hy"], PromptCache(), cfg.agents)
    assert isinstance(f, HybridFactory) and f.s2s.cfg.voice == "marin"  # no match for espeak's en: the agent's own


# -- the S2S agents' handover hook ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def realtime() -> Iterator[RealtimeServer]:
    with RealtimeServer() as s:
        yield s


def test_openai_realtime_takes_over_with_the_conversation_as_items(realtime: RealtimeServer,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    realtime.reset()
    realtime.script(speak(ANSWER))
    call = FakeCall()

    async def main() -> None:
        clock = asyncio.create_task(call.clock())
        agent = asyncio.create_task(OpenAIRealtimeAgent(config(realtime), HANDOVER).run(call))
        deadline = time.monotonic() + 10
        while not call.turns and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for t in (clock, agent):
            t.cancel()
        await asyncio.gather(clock, agent, return_exceptions=True)

    asyncio.run(main())
    assert realtime.violations == []
    sent = [r.event for r in realtime.received if r.type != "input_audio_buffer.append"]
    assert [e["type"] for e in sent] == ["session.update", *["conversation.item.create"] * 5, "response.create"]
    items = [e["item"] for e in sent[1:6]]
    assert items[0] == {"type": "message", "role": "system", "content": [{"type": "input_text", "text": HANDOVER_NOTE}]}
    assert [(i["role"], i["content"][0]["type"], i["content"][0]["text"]) for i in items[1:]] == [
        ("assistant" if role == "assistant" else "user", "output_text" if role == "assistant" else "input_text", text)
        for role, text in HANDOVER.messages]
    assert "response" not in sent[6]  # the session's own instructions, not the greeting's
    [turn] = call.turns
    assert turn["trigger"] == "handover" and turn["text"] == ANSWER and turn["status"] == "completed", turn
    assert turn["first_audio_ms"] < 500, turn


@pytest.fixture(scope="module")
def gemini() -> Iterator[GeminiLiveServer]:
    with GeminiLiveServer() as s:
        yield s


def test_gemini_live_takes_over_with_the_conversation_as_client_content(gemini: GeminiLiveServer,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GeminiLiveFactory, "create", lambda self: GeminiLiveAgent(self, HANDOVER))
    gemini.script(Reply(ANSWER))
    before = len(gemini.violations)
    c = asyncio.run(_call(gemini, 5.0, []))
    assert gemini.violations[before:] == []
    [s] = c.sessions
    assert s.texts == [f"({HANDOVER_NOTE})", *(text for _, text in HANDOVER.messages)]  # and no greeting
    [turn] = c.session.record.turns
    assert turn["trigger"] == "handover" and turn["text"] == ANSWER, turn
    assert c.speech_s(0.0, 5.0) > 1.5


# -- tools across the move --------------------------------------------------------------------------------------
def test_tools_of_either_backend_are_offered_to_both() -> None:
    tools = {"order_status": {"description": "Look up an order", "http": {"url": "http://127.0.0.1:9/o"}},
             "cancel_order": {"description": "Cancel an order", "http": {"url": "http://127.0.0.1:9/c",
                                                                          "method": "POST"}}}
    llm = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": None}
    doc = yaml.safe_load(gateway())
    doc["tools"] = tools
    doc["agents"]["hy"]["cascade"] = {"type": "cascaded", "llm": llm, "tools": ["order_status"]}
    doc["agents"]["rt"]["tools"] = ["end_call", "cancel_order"]
    cfg = parse_config(yaml.safe_dump(doc))
    f = make_factory("hy", cfg.agents["hy"], PromptCache(), cfg.agents, tools=cfg.tools)
    assert isinstance(f, HybridFactory)
    assert set(f.cascade.tools) == set(f.s2s.tools) == {"order_status", "cancel_order"}
    assert f.s2s.cfg.tools == ("end_call", "cancel_order", "order_status")
    del doc["agents"]["hy"]["cascade"]["llm"]
    with pytest.raises(ConfigError, match="agents.hy.cascade.tools: tools are offered to an LLM, and this cascade "
                                          "has no llm"):
        parse_config(yaml.safe_dump(doc))


def test_a_tool_call_in_flight_at_the_move_is_waited_for_and_handed_over_not_repeated(
        realtime: RealtimeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A barge-in cut the cascade's reply while its POST ran; the caller's next turn escalates. The POST is made
    once, its record says the cascade made it, and the S2S session gets it as a done function call before the
    caller's last turn, with the tool offered in its session."""
    monkeypatch.setenv(KEY_ENV, "sk-test")
    realtime.reset()
    realtime.script(speak(ANSWER))
    call = Call()
    tagged = _Tagged(call)

    async def main(hook: Webhook, llm: LlmServer) -> Handover:
        tool = order_tool(hook.url, http={"method": "POST"})
        brain = LlmBrain(LlmClient(LlmConfig(llm.base_url, "m")), "sys", "hi", "Hmm.", 5.0, "Sorry.")
        runner = ToolRunner({"order_status": tool}, ["order_status"])
        brain.tools = CallTools(runner, tagged)
        reply = asyncio.ensure_future(turn(brain))
        await asyncio.sleep(0.3)  # the webhook is working on it
        reply.cancel()  # the caller talks over the filler
        await asyncio.gather(reply, return_exceptions=True)
        assert not brain.tools.outcomes  # still running
        handover = await handover_from([("user", "Where is my order 1234?")], TRIGGER, brain.tools)
        tagged.backend = "openai_realtime"
        clock = asyncio.create_task(call.clock())
        agent = asyncio.create_task(OpenAIRealtimeAgent(config(realtime, tools=("order_status",)), handover,
                                                        {"order_status": tool}).run(tagged))
        deadline = time.monotonic() + 10
        while not [t for t in call.turns if t.get("trigger") == "handover"] and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for t in (clock, agent):
            t.cancel()
        await asyncio.gather(clock, agent, return_exceptions=True)
        await brain.close()
        await runner.aclose()
        return handover

    with Webhook(reply={"status": "shipped"}, delay_s=0.6) as hook, LlmServer() as llm:
        llm.script(ASK)
        handover = asyncio.run(main(hook, llm))
    assert len(hook.requests) == 1  # made once, finished although the reply it belonged to was cut
    output = json.dumps({"ok": True, "result": {"status": "shipped"}})
    assert handover.tools == (ToolOutcome("call_1", "order_status", '{"order_id": "1234"}', output),)
    [record] = [t for t in call.turns if t.get("tool") == "order_status"]
    assert record["backend"] == "cascaded" and record["ok"], record
    assert realtime.violations == []
    sent = [r.event for r in realtime.received if r.type != "input_audio_buffer.append"]
    assert [s["name"] for s in sent[0]["session"]["tools"]] == ["order_status"]
    items = [e["item"] for e in sent if e["type"] == "conversation.item.create"]
    assert [i["type"] for i in items] == ["message", "message", "function_call", "function_call_output", "message"]
    assert items[2] == {"type": "function_call", "call_id": "call_1", "name": "order_status",
                        "arguments": '{"order_id": "1234"}'}
    assert items[3] == {"type": "function_call_output", "call_id": "call_1", "output": output}
    assert items[4]["content"][0]["text"] == TRIGGER
    [answer] = [t for t in call.turns if t.get("trigger") == "handover"]
    assert answer["backend"] == "openai_realtime" and answer["text"] == ANSWER, answer


def test_gemini_is_told_the_tool_calls_made_before_it_took_over() -> None:
    h = Handover((("user", "Where is order 1234?"), ("assistant", "It has shipped."), ("user", TRIGGER)), "",
                 (ToolOutcome("call_1", "order_status", '{"order_id": "1234"}', '{"ok": true}'),))
    turns = handover_turns(h)
    assert [t["parts"][0]["text"] for t in turns] == [
        "Where is order 1234?", "It has shipped.",
        '(Already done before you took over, do not repeat it: order_status({"order_id": "1234"}) returned '
        '{"ok": true})', TRIGGER]
