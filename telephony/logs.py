"""One structured (JSON) log line per call event."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

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
    event_at(logging.INFO, name, **fields)


def event_at(level: int, name: str, **fields: Any) -> None:
    if log.isEnabledFor(level):
        rec = {"ts": round(time.time(), 3), "event": name, **fields}
        log.log(level, json.dumps(rec, default=str, separators=(",", ":")))
