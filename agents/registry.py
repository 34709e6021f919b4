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
