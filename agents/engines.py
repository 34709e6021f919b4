"""The speech engines an agents config names, loaded once to see that they load (`voicegate check`).

Each failure is an `EngineLoadError` at the option that names the engine (`asr.model_path`, `voice`, `voices.hi`),
so the caller can give the config file's line. ASR engines load in their worker process, as they do when serving: a
model that crashes Kaldi or onnxruntime fails its check instead of ending the checker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from agents.config import AgentConfig, CascadedAgentConfig, EngineLoadError, HybridAgentConfig, ScriptedAgentConfig
from agents.speech.asr import AsrError
from agents.speech.tts import TtsError, load_voice
from agents.speech.worker import AsrWorker, EngineSpec


def _cascades(agents: Mapping[str, AgentConfig]) -> list[tuple[tuple[str, ...], CascadedAgentConfig]]:
    out: list[tuple[tuple[str, ...], CascadedAgentConfig]] = []
    for name, cfg in agents.items():
        if isinstance(cfg, CascadedAgentConfig):
            out.append((("agents", name), cfg))
        elif isinstance(cfg, HybridAgentConfig) and isinstance(cfg.cascade, CascadedAgentConfig):
            out.append((("agents", name, "cascade"), cfg.cascade))
    return out


async def _asr_loads(spec: EngineSpec) -> str | None:
    worker = AsrWorker(spec)
    try:
        await worker.start()
    except AsrError as e:
        return str(e)
    finally:
        worker.close()
    return None


async def check_engines(agents: Mapping[str, AgentConfig]) -> list[EngineLoadError]:
    """Load every ASR engine and voice the agents name (each distinct one once); the failures."""
    voices: list[tuple[tuple[str | int, ...], str]] = []
    asr: dict[EngineSpec, list[tuple[str | int, ...]]] = {}
    for where, cascade in _cascades(agents):
        asr.setdefault(cascade.asr.spec(), []).append((*where, "asr", cascade.asr.model_option))
        voices.extend(((*where, *loc), v) for loc, v in cascade.voice_options())
    for name, cfg in agents.items():
        if isinstance(cfg, ScriptedAgentConfig):
            voices.append((("agents", name, "voice"), cfg.voice))
    errors: list[EngineLoadError] = []
    for spec, locs in asr.items():  # one at a time: each is a process loading a model
        if (problem := await _asr_loads(spec)) is not None:
            errors.extend(EngineLoadError(loc, problem) for loc in locs)
    failed: dict[str, str] = {}
    for loc, voice in voices:
        if voice not in failed:
            try:
                await asyncio.to_thread(load_voice, voice)
                failed[voice] = ""
            except TtsError as e:
                failed[voice] = str(e)
        if failed[voice]:
            errors.append(EngineLoadError(loc, failed[voice]))
    return errors
