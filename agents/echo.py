"""The echo agent: plays the caller's audio back, for interop and latency tests."""

from __future__ import annotations

import asyncio

from agents.base import Agent, AgentFactory, CallControl, HungUp


class EchoAgent(Agent):
    async def run(self, call: CallControl) -> None:
        call.set_echo(True)
        while True:
            ev = await call.next_event()
            if isinstance(ev, HungUp):
                return
            await asyncio.sleep(0)


class EchoFactory(AgentFactory):
    def __init__(self, name: str) -> None:
        self.name = name

    def create(self) -> Agent:
        return EchoAgent()

    @property
    def barge_in(self) -> bool:
        return False
