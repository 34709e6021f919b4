"""One structured (JSON) log line per call event; sinks (metrics) subscribe to the events (agents.eventlog)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from agents.eventlog import Sink, emit, subscribe, tag_events

__all__ = ["Sink", "event", "event_at", "log", "setup_logging", "subscribe", "tag_events"]

log = logging.getLogger("voicegate")


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("voicegate")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def event(name: str, **fields: Any) -> None:
    """Log `{"ts":..., "event": name, ...fields}` as one JSON line."""
    emit(log, logging.INFO, name, fields)


def event_at(level: int, name: str, **fields: Any) -> None:
    emit(log, level, name, fields)
