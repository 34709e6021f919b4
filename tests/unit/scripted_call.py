"""One call to a scripted agent through a real CallSession and CallMedia, on a simulated media clock ten times faster
than real time; shared by the scripted agent's tests."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import TypeAdapter

from agents.config import AgentConfig
from agents.registry import make_factory
from agents.session import CallSession, SessionTimeouts
from agents.speech.tts import PromptCache
from agents.tools import ToolConfig
from media.frames import SILENCE
from media.pipeline import CallMedia
from media.recorder import StereoRecorder


class Actions:
    """The call actions a session asks for, kept for the test to check."""

    def __init__(self) -> None:
        self.hung_up = asyncio.Event()
        self.transfers: list[tuple[str, bool]] = []
        self.dtmf: list[str] = []

    def hangup(self) -> None:
        self.hung_up.set()

    def transfer(self, uri: str, attended: bool = False) -> None:
        self.transfers.append((uri, attended))

    def send_dtmf(self, digits: str) -> None:
        self.dtmf.append(digits)


async def run_scripted(flow: str, keys: list[tuple[float, str]], *, caller: str = "caller",
                       tools: Mapping[str, ToolConfig] | None = None, headers: dict[str, str] | None = None,
                       recorder: StereoRecorder | None = None, caller_frame: bytes = SILENCE,
                       timeout_s: float = 20.0) -> tuple[CallSession, list[dict[str, Any]], Actions]:
    """Run the flow (YAML) until the agent hangs up; each `(at, digit)` key is pressed `at` seconds after the agent's
    audio starts; the caller sends `caller_frame` every 20 ms."""
    cfg = TypeAdapter(AgentConfig).validate_python(yaml.safe_load(flow))
    prompts = PromptCache()
    factory = make_factory("t", cfg, prompts, tools=tools)
    await factory.prepare()
    logs: list[dict[str, Any]] = []
    session: CallSession
    media = CallMedia(lambda ev: session.on_media_event(ev))
    media.set_recorder(recorder)
    actions = Actions()
    session = CallSession("c1", caller, "100", factory, media, actions, prompts,
                          lambda name, **f: logs.append({"event": name, **f}), SessionTimeouts())
    session.sip_headers = dict(headers or {})
    keys = list(keys)

    async def clock() -> None:
        t, started = 0.0, None
        while True:
            if media.next_outbound(t) != SILENCE and started is None:
                started = t
            media.on_inbound(t, caller_frame)
            for at, digit in list(keys):
                if started is not None and t - started >= at:
                    keys.remove((at, digit))
                    session.on_dtmf(digit)
            t += 0.02
            await asyncio.sleep(0.002)

    clk = asyncio.create_task(clock())
    run = asyncio.create_task(session.run())
    async with asyncio.timeout(timeout_s):
        await actions.hung_up.wait()
    session.on_hangup("test")
    async with asyncio.timeout(5):
        await run
    clk.cancel()
    return session, logs, actions


def said(logs: list[dict[str, Any]]) -> list[str]:
    return [e["text"] for e in logs if e["event"] == "agent_say"]
