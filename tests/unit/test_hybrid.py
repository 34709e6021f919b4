"""The hybrid agent's parts: its config (names resolved and checked), the S2S voice it picks, and the handover hook
of each S2S agent against its local protocol server (the conversation goes up as context, the last turn is answered
at once, no greeting)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from agents.base import Handover
from agents.config import HybridAgentConfig
from agents.gemini_live import GeminiLiveAgent, GeminiLiveFactory
from agents.hybrid import HANDOVER_NOTE, HybridFactory
from agents.openai_realtime import OpenAIRealtimeAgent
from agents.registry import make_factory
from agents.speech.tts import PromptCache
from telephony.config import ConfigError, parse_config
from tests.servers.gemini_live import GeminiLiveServer, Reply
from tests.servers.openai_realtime import RealtimeServer, speak
from tests.unit.test_gemini_live import _call
from tests.unit.test_openai_realtime import KEY_ENV, FakeCall, config

HANDOVER = Handover((("assistant", "Thanks for calling Harbour Hotel. How can I help?"),
                     ("user", "What time does the restaurant open?"),
                     ("assistant", "The restaurant opens at noon."),
                     ("user", "I want to speak to someone about a complaint.")), HANDOVER_NOTE)
ANSWER = "I am sorry to hear that. Tell me what happened."


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
    ({"escalate_when": {"vip_callers": ["/(/"]}}, "is not a valid regular expression"),
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
