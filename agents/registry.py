"""Agent backends by config type name (baresip-style: a small core, modules registered by name)."""

from __future__ import annotations

from collections.abc import Mapping

from agents.base import AgentFactory
from agents.cascaded import CascadedFactory
from agents.config import (
    AgentConfig,
    CascadedAgentConfig,
    EchoAgentConfig,
    HybridAgentConfig,
    ScriptedAgentConfig,
    hybrid_parts,
)
from agents.cost import Prices
from agents.echo import EchoFactory
from agents.gemini_live import GeminiLiveConfig, GeminiLiveFactory
from agents.hybrid import HybridFactory
from agents.openai_realtime import OpenAIRealtimeConfig, OpenAIRealtimeFactory
from agents.scripted import ScriptedFactory
from agents.speech.tts import PromptCache
from agents.tools import ToolConfig


def make_factory(name: str, cfg: AgentConfig, prompts: PromptCache,
                 agents: Mapping[str, AgentConfig] | None = None, prices: Prices | None = None,
                 tools: Mapping[str, ToolConfig] | None = None) -> AgentFactory:
    """The factory of one configured agent; `agents` (all of them) resolves the names a hybrid agent uses, `prices`
    its budget's S2S rate, `tools` the business tools its config lists."""
    if isinstance(cfg, EchoAgentConfig):
        return EchoFactory(name)
    if isinstance(cfg, ScriptedAgentConfig):
        return ScriptedFactory(name, cfg, prompts, tools)
    if isinstance(cfg, CascadedAgentConfig):
        return CascadedFactory(name, cfg, tools)
    if isinstance(cfg, GeminiLiveConfig):
        return GeminiLiveFactory(name, cfg, prompts, tools)
    if isinstance(cfg, OpenAIRealtimeConfig):
        return OpenAIRealtimeFactory(name, cfg, prompts, tools)
    if isinstance(cfg, HybridAgentConfig):
        return HybridFactory(name, cfg, *hybrid_parts(name, cfg, agents or {}), prompts, prices, tools)
    raise ValueError(f"agent {name!r}: unknown type {cfg.type!r}")


def link_fallbacks(factories: Mapping[str, AgentFactory]) -> None:
    """Give each speech-to-speech factory (a hybrid's too) the cascade its config names as `fallback`; ValueError
    when that is not a configured cascaded agent (telephony.config checks this first, with the file's line)."""
    for name, f in factories.items():
        s2s = f.s2s if isinstance(f, HybridFactory) else f
        if not isinstance(s2s, OpenAIRealtimeFactory | GeminiLiveFactory) or s2s.cfg.fallback is None:
            continue
        cascade = factories.get(s2s.cfg.fallback)
        if not isinstance(cascade, CascadedFactory):
            raise ValueError(f"agents.{name}.fallback: {s2s.cfg.fallback!r} is not a configured cascaded agent")
        s2s.fallback = cascade
