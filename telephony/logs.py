"""One structured (JSON) log line per call event, and the sinks (metrics, audit) that subscribe to the events."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("voicegate")

Sink = Callable[[str, Mapping[str, Any]], None]
"""Gets every event's name and fields, on the thread that raised it (pjsua, media clock or loop): must be quick."""

_sinks: tuple[Sink, ...] = ()
_sinks_lock = threading.Lock()


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


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("voicegate")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def event(name: str, **fields: Any) -> None:
    """Log `{"ts":..., "event": name, ...fields}` as one JSON line."""
    event_at(logging.INFO, name, **fields)


def event_at(level: int, name: str, **fields: Any) -> None:
    for sink in _sinks:  # a tuple, swapped whole under the lock: iterating it needs none
        try:
            sink(name, fields)
        except Exception as e:  # a broken sink must not break the call that raised the event
            log.error(json.dumps({"ts": round(time.time(), 3), "event": "sink_error", "sink": repr(sink),
                                  "for": name, "error": repr(e)}, separators=(",", ":")))
    if log.isEnabledFor(level):
        rec = {"ts": round(time.time(), 3), "event": name, **fields}
        log.log(level, json.dumps(rec, default=str, separators=(",", ":")))
