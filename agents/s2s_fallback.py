"""A speech-to-speech agent's `fallback`: when its server is dead, a cascaded agent carries the call on.

Dead means a connect the server's host refused (nothing listens there: waiting cannot help), a key that is missing
or refused, or the agent's reconnects used up. The agent first says its apology (at once, from the prompt cache),
then the cascade takes the call with the conversation so far as a `Handover`, the same way a spend cap's cascade
does (agents.session): with a conversation it goes on without a greeting, without one it greets the caller. The
move is recorded as a turn of its own (`fallback`, `reason`) and logged (`s2s_fallback`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from agents.base import CallControl, Handover
from agents.eventlog import emit
from agents.s2s_history import Role

if TYPE_CHECKING:
    from agents.session import TakesOver

_log = logging.getLogger("voicegate.s2s_fallback")


def refused(e: BaseException) -> bool:
    """The server's host refused the connection (a single address: `OSError('Multiple exceptions ...')`, which
    asyncio raises when a name resolves to several, is retried as any other failure)."""
    return isinstance(e, ConnectionRefusedError)


async def fall_back(call: CallControl, to: TakesOver, name: str, engine: str, reason: str,
                    messages: Sequence[tuple[Role, str]]) -> None:
    """Run the cascade `to` (configured as `name`) on the call, with `messages` as the conversation so far."""
    emit(_log, logging.INFO, "s2s_fallback", {"call": call.call_id, "engine": engine, "to": name, "reason": reason,
                                              "messages": len(messages)})
    call.record_turn({"engine": engine, "fallback": name, "reason": reason})
    await to.create(Handover(tuple(messages))).run(call)
