"""The LLM-played caller: the prompt that makes a chat model play a persona with a goal, and its mouth (the LLM
request and the TTS of its line, on a background thread).

The conversation goes to the model as the agent's words in `user` messages and the caller's own lines in
`assistant` ones, so the model writes the caller's next line. It ends a line with `GOAL_MARK` when the goal is
reached; the runner strips the mark and ends the step. Requests go at temperature 0 with the run's seed
(`--seed`, else drawn), so a run given the same seed asks the same way again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from agents.llm import LlmClient, LlmConfig, LlmError, Message, TextDelta
from telephony.simulator.script import PersonaArgs, Speech

GOAL_MARK = "[GOAL REACHED]"
SILENT = "(the agent said nothing)"
"""The `user` message of a turn in which the agent did not speak."""
_MARK = re.compile(re.escape(GOAL_MARK), re.IGNORECASE)


def system_prompt(p: PersonaArgs) -> str:
    return (f"You are the caller on a phone call with a voice agent. You are {p.role}. Your goal: {p.goal}. "
            "Each reply is only the words you say next: one or two short sentences, no stage directions. "
            f"When your goal is reached, say a short goodbye and end that reply with {GOAL_MARK}.")


def messages(p: PersonaArgs, turns: list[tuple[str, str]]) -> list[Message]:
    """The request for the caller's next line, after `turns` of (who, text): who is `agent` or `caller`."""
    out: list[Message] = [{"role": "system", "content": system_prompt(p)}]
    for who, text in turns:
        out.append({"role": "user" if who == "agent" else "assistant", "content": text or SILENT})
    return out


def parse_line(text: str) -> tuple[str, bool]:
    """The words to say and whether the model marked the goal reached."""
    return " ".join(_MARK.sub(" ", text).split()), bool(_MARK.search(text))


@dataclass(frozen=True)
class PersonaLine:
    """The model's next line, rendered; `error` when the request or the TTS failed."""

    text: str
    goal_reached: bool
    pcm: bytes
    llm_ms: float = 0.0
    error: str = ""


async def _complete(cfg: LlmConfig, request: list[Message]) -> str:
    async with LlmClient(cfg) as client, contextlib.aclosing(client.stream(request)) as stream:
        return "".join([ev.text async for ev in stream if isinstance(ev, TextDelta)])


class Mouth:
    """Asks the persona's model for its next line and renders it with `render`, one request at a time."""

    def __init__(self, render: Callable[[Speech], bytes], seed: int) -> None:
        self._render, self._seed = render, seed
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="persona")

    def submit(self, p: PersonaArgs, request: list[Message]) -> Future[PersonaLine]:
        """The next line; the future never raises (`PersonaLine.error` instead)."""
        return self._pool.submit(self._line, p, request)

    def _line(self, p: PersonaArgs, request: list[Message]) -> PersonaLine:
        cfg = LlmConfig(p.url, p.model, p.api_key, temperature=0.0, first_token_timeout_s=20.0, total_timeout_s=60.0,
                        seed=self._seed)
        t0 = time.perf_counter()
        try:
            text, goal = parse_line(asyncio.run(_complete(cfg, request)))
        except LlmError as e:
            return PersonaLine("", False, b"", error=str(e))
        ms = round((time.perf_counter() - t0) * 1000, 1)
        if not text:
            return PersonaLine("", goal, b"", ms)
        try:
            return PersonaLine(text, goal, self._render(Speech(say=text, voice=p.voice)), ms)
        except Exception as e:  # a TTS failure is the step's result, not the run's end
            return PersonaLine(text, goal, b"", ms, f"TTS of {text!r} failed: {e!r}")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
