"""The LLM-played caller: the prompt that makes a chat model play a persona with a goal, and its mouth (the LLM
request and the TTS of its line, on a background thread).

The conversation goes to the model as the agent's words in `user` messages and the caller's own lines in
`assistant` ones, so the model writes the caller's next line. It ends a line with `GOAL_MARK` when the goal is
reached; the runner strips the mark and, with `judge`, asks the model in a separate request (`judge_messages`) only
whether the transcript shows the goal met, so the persona's own claim is not the verdict. Requests go at
temperature 0 with the run's seed (`--seed`, else drawn), so a run given the same seed asks the same way again.
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


JUDGE_PROMPT = ("You judge the transcript of a phone call between a caller and a voice agent. Answer only yes or no: "
                "was the caller's goal met in this call, going by what was said?")


def transcript(turns: list[tuple[str, str]]) -> str:
    """`agent: ...` and `caller: ...` lines, a silent turn as SILENT."""
    return "\n".join(f"{who}: {text or SILENT}" for who, text in turns)


def judge_messages(p: PersonaArgs, turns: list[tuple[str, str]]) -> list[Message]:
    """The request asking only whether the goal was met in the transcript of `turns`."""
    return [{"role": "system", "content": JUDGE_PROMPT},
            {"role": "user", "content": f"The caller's goal: {p.goal}\n\nTranscript:\n{transcript(turns)}\n\n"
                                        "Was the goal met? Answer yes or no."}]


def parse_verdict(text: str) -> bool | None:
    """True for an answer that starts with yes, False for no, None for anything else."""
    first = (re.findall(r"[a-z]+", text.lower()) or [""])[0]
    return {"yes": True, "no": False}.get(first)


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


@dataclass(frozen=True)
class Verdict:
    """The judge's answer: whether the goal was met; `error` when the request failed or the answer was neither."""

    met: bool
    answer: str
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

    def judge(self, p: PersonaArgs, request: list[Message]) -> Future[Verdict]:
        """The judge's verdict on `request` (`judge_messages`); the future never raises (`Verdict.error`)."""
        return self._pool.submit(self._verdict, p, request)

    def _config(self, p: PersonaArgs, max_tokens: int = 512) -> LlmConfig:
        return LlmConfig(p.url, p.model, p.api_key, temperature=0.0, max_tokens=max_tokens, first_token_timeout_s=20.0,
                         total_timeout_s=60.0, seed=self._seed)

    def _verdict(self, p: PersonaArgs, request: list[Message]) -> Verdict:
        t0 = time.perf_counter()
        try:
            answer = asyncio.run(_complete(self._config(p, max_tokens=16), request)).strip()
        except LlmError as e:
            return Verdict(False, "", error=str(e))
        ms = round((time.perf_counter() - t0) * 1000, 1)
        met = parse_verdict(answer)
        if met is None:
            return Verdict(False, answer, ms, f"the judge answered {answer!r}, not yes or no")
        return Verdict(met, answer, ms)

    def _line(self, p: PersonaArgs, request: list[Message]) -> PersonaLine:
        cfg = self._config(p)
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
