"""Agent backends by config type name (baresip-style: a small core, modules registered by name)."""

from __future__ import annotations

from agents.base import AgentFactory
from agents.cascaded import CascadedFactory
from agents.config import AgentConfig, CascadedAgentConfig, EchoAgentConfig, ScriptedAgentConfig
from agents.echo import EchoFactory
from agents.gemini_live import GeminiLiveConfig, GeminiLiveFactory
from agents.openai_realtime import OpenAIRealtimeConfig, OpenAIRealtimeFactory
from agents.scripted import ScriptedFactory
from agents.speech.tts import PromptCache


def make_factory(name: str, cfg: AgentConfig, prompts: PromptCache) -> AgentFactory:
    if isinstance(cfg, EchoAgentConfig):
        return EchoFactory(name)
    if isinstance(cfg, ScriptedAgentConfig):
        return ScriptedFactory(name, cfg, prompts)
    if isinstance(cfg, CascadedAgentConfig):
        return CascadedFactory(name, cfg)
    if isinstance(cfg, GeminiLiveConfig):
        return GeminiLiveFactory(name, cfg, prompts)
    if isinstance(cfg, OpenAIRealtimeConfig):
        return OpenAIRealtimeFactory(name, cfg, prompts)
    raise ValueError(f"agent {name!r}: unknown type {cfg.type!r}")
