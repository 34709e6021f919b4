"""Reading and printing the trunk status file that `voicegate serve` keeps (see telephony/trunks.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def read_status(path: Path) -> dict[str, Any]:
    """The status document; ValueError when it is not one."""
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("trunks"), list):
        raise ValueError("not a trunk status file")
    return doc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _in(t: float | None, now: float) -> str:
    return "-" if t is None else f"{t - now:.0f} s"


def _keepalive(ka: dict[str, Any] | None, running: bool) -> str:
    if not ka or not running or ka["state"] == "unknown":
        return "-"
    return f"up {ka['rtt_ms']:.0f} ms" if ka["state"] == "up" else f"down {ka['code']}"


def status_table(doc: dict[str, Any], configured: list[str], now: float | None = None) -> list[str]:
    """Lines for a terminal: one per trunk, then where the state comes from."""
    now = time.time() if now is None else now
    running = bool(doc.get("running"))
    rows: list[tuple[str, ...]] = [("trunk", "state", "last response", "expires in", "retry in", "refreshes")]
    seen = set()
    for t in doc["trunks"]:
        seen.add(t["trunk"])
        rows.append((t["trunk"], t["state"], f"{t['code']} {t['reason']}".strip() if t["code"] else "-",
                     _in(t.get("expires_at") if running else None, now),
                     _in(t.get("next_retry") if running else None, now), str(t.get("refreshes", 0))))
    rows += [(name, "not in status file", "-", "-", "-", "-") for name in configured if name not in seen]
    if any("keepalive" in t for t in doc["trunks"]):  # the column only where some trunk pings
        kas = {t["trunk"]: _keepalive(t.get("keepalive"), running) for t in doc["trunks"]}
        rows = [(*r, "keepalive" if i == 0 else kas.get(r[0], "-")) for i, r in enumerate(rows)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    age = now - float(doc.get("updated", now))
    pid = int(doc.get("pid", 0))
    if not running:
        lines.append(f"voicegate (pid {pid}) stopped {age:.0f} s ago (it unregisters at exit): the last states")
    elif not _alive(pid):
        lines.append(f"stale: voicegate pid {pid} is gone (last change {age:.0f} s ago)")
    else:
        lines.append(f"voicegate pid {pid}, last change {age:.0f} s ago")
    return lines
