"""Events as one JSON log line each, and the sinks (metrics) that subscribe to them.

It lives in `agents/` so that backends raise their events (connection failures, tool calls) through the same sinks
as the gateway, whose `telephony.logs` wraps it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

Sink = Callable[[str, Mapping[str, Any]], None]
"""Gets every event's name and fields, on the thread that raised it (pjsua, media clock or loop): must be quick."""

_sinks: tuple[Sink, ...] = ()
_sinks_lock = threading.Lock()
_tags: dict[str, Any] = {}


def tag_events(**fields: Any) -> None:
    """Add `fields` to every log line of this process from now on (a worker's index)."""
    _tags.update(fields)


def subscribe(sink: Sink) -> Callable[[], None]:
    """Send every event to `sink` from now on; returns the function that unsubscribes it."""
    global _sinks
    with _sinks_lock:
        _sinks = (*_sinks, sink)

    def unsubscribe() -> None:
        global _sinks
        with _sinks_lock:
            _sinks = tuple(s for s in _sinks if s is not sink)

    return unsubscribe


_call: contextvars.ContextVar[str | None] = contextvars.ContextVar("voicegate_call", default=None)


def bind_call(call_id: str) -> None:
    """Events raised from now on in this context (an asyncio task, and the tasks and `to_thread` work it starts)
    belong to call `call_id`: they carry it as `call`, the call's trace id, unless they name a call themselves."""
    _call.set(call_id)


def emit(logger: logging.Logger, level: int, name: str, fields: Mapping[str, Any]) -> None:
    """Hand the event to every sink (whatever the log level), then log `{"ts", "event": name, ...fields}`."""
    if "call" not in fields and (call := _call.get()) is not None:
        fields = {"call": call, **fields}
    for sink in _sinks:  # a tuple, swapped whole under the lock: iterating it needs none
        try:
            sink(name, fields)
        except Exception as e:  # a broken sink must not break the call that raised the event
            logger.error(json.dumps({"ts": round(time.time(), 3), "event": "sink_error", "sink": repr(sink),
                                     "for": name, "error": repr(e)}, separators=(",", ":")))
    if logger.isEnabledFor(level):
        rec = {"ts": round(time.time(), 3), "event": name, **_tags, **fields}
        logger.log(level, json.dumps(rec, default=str, separators=(",", ":")))


_stages = logging.getLogger("voicegate.stages")


def trace(name: str, /, **fields: Any) -> None:
    """A pipeline stage's event (`asr_*`, `llm_*`, `tts_*`, `tool_*`), carrying the call bound to this context
    (`bind_call`): one trace id follows a call from its INVITE through every stage. Sizes and times, never text."""
    emit(_stages, logging.INFO, name, fields)
