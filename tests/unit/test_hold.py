"""A call on hold is not a silent caller: the session's silence re-prompt and hang-up wait (agents/session.py)."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from pydantic import TypeAdapter

from agents.config import AgentConfig
from agents.registry import make_factory
from agents.session import CallSession, SessionTimeouts
from agents.speech.tts import PromptCache
from media.frames import SILENCE
from media.pipeline import CallMedia
from tests.unit.scripted_call import Actions

FLOW = """
type: scripted
voice: en
start: a
nodes:
  a:
    - pause_s: 2.5
    - hangup: done
"""


async def run_call(held: bool) -> tuple[str, list[str]]:
    """The flow with silence timeouts of 0.5 s (re-prompt) and 1 s (hang-up); the caller holds from the start or
    not. Returns the end reason and what the agent said."""
    prompts = PromptCache()
    factory = make_factory("t", TypeAdapter(AgentConfig).validate_python(yaml.safe_load(FLOW)), prompts)
    await factory.prepare()
    said: list[str] = []
    session: CallSession
    media = CallMedia(lambda ev: session.on_media_event(ev))
    actions = Actions()
    session = CallSession("c1", "caller", "100", factory, media, actions, prompts,
                          lambda name, **f: said.append(str(f["text"])) if name == "agent_say" else None,
                          SessionTimeouts(max_call_s=30, silence_reprompt_s=0.5, silence_hangup_s=1.0))
    session.voice = "en"  # espeak-ng: the re-prompt renders at once
    session.on_hold(held)

    async def clock() -> None:
        t = 0.0
        while True:
            media.next_outbound(t)
            media.on_inbound(t, SILENCE)
            t += 0.02
            await asyncio.sleep(0.02)

    clk = asyncio.create_task(clock())
    run = asyncio.create_task(session.run())
    async with asyncio.timeout(10):
        await actions.hung_up.wait()
    session.on_hangup("test")
    async with asyncio.timeout(5):
        await run
    clk.cancel()
    return session.record.end_reason, said


@pytest.mark.timeout(30)
def test_a_held_call_is_neither_reprompted_nor_hung_up_for_silence():
    assert asyncio.run(run_call(held=True)) == ("done", [])


@pytest.mark.timeout(30)
def test_a_silent_caller_not_on_hold_is_reprompted_then_hung_up():
    _, said = asyncio.run(run_call(held=False))
    assert said == [SessionTimeouts().reprompt_text, SessionTimeouts().goodbye_text], said
