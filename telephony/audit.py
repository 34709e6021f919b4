"""The audit log: append-only JSON lines, each entry chained to the one before by SHA-256.

An entry is `{"seq", "ts", "action", ..., "prev", "hash"}`: `prev` is the previous entry's `hash` (64 zeros for the
first) and `hash` is the SHA-256 of the entry's canonical JSON without `hash`. So a changed entry fails its own hash,
and a removed or reordered one breaks `seq` and `prev` of the next. Cutting entries off the end leaves a valid
shorter chain: keep the head hash that `verify` prints somewhere else to detect that. Writers take an exclusive
`flock` on the file, so gateway workers and the CLI can append to one log.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
_TAIL_BLOCK = 4096


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of the entry's canonical JSON (sorted keys, no spaces), `hash` left out."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _last_line(fd: int) -> bytes:
    end = os.lseek(fd, 0, os.SEEK_END)
    data = b""
    pos = end
    while pos > 0:
        step = min(_TAIL_BLOCK, pos)
        pos -= step
        data = os.pread(fd, step, pos) + data
        lines = data.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or pos == 0:
            return lines[-1]
    return b""


class AuditError(Exception):
    """The audit log cannot be appended to (its last entry is damaged)."""


def append(path: Path, action: str, **fields: Any) -> dict[str, Any]:
    """Append an entry for `action` with `fields`, chained to the last entry; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        last = _last_line(fd)
        if last:
            try:
                prev = json.loads(last)
                seq, prev_hash = int(prev["seq"]) + 1, str(prev["hash"])
            except (ValueError, KeyError, TypeError) as e:
                raise AuditError(f"{path}: the last entry is damaged ({e}); run `voicegate audit verify`") from None
        else:
            seq, prev_hash = 1, GENESIS
        entry: dict[str, Any] = {"seq": seq, "ts": datetime.now().astimezone().isoformat(timespec="milliseconds"),
                                 "action": action, **fields, "prev": prev_hash}
        entry["hash"] = entry_hash(entry)
        os.write(fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
        os.fsync(fd)
        return entry
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class Verdict:
    entries: int
    head: str
    """The last entry's hash: keep it elsewhere to detect entries cut off the end."""
    problem: str = ""
    """`file:line: entry N: why` for the first bad entry; empty when the chain is intact."""

    @property
    def ok(self) -> bool:
        return not self.problem


def verify(path: Path) -> Verdict:
    """Walk the chain; stop at the first entry that is changed, missing, out of order or not JSON."""
    prev, n = GENESIS, 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            where = f"{path}:{line_no}: entry {n + 1}"
            try:
                entry = json.loads(raw)
                seq, claimed, linked = entry["seq"], entry["hash"], entry["prev"]
            except (ValueError, KeyError, TypeError) as e:
                return Verdict(n, prev, f"{where}: not an audit entry ({type(e).__name__}: {e})")
            if seq != n + 1:
                return Verdict(n, prev, f"{where}: has seq {seq}: an entry before it was removed or moved")
            if linked != prev:
                return Verdict(n, prev, f"{where}: prev does not match the hash of the entry before it")
            if entry_hash(entry) != claimed:
                return Verdict(n, prev, f"{where}: its content was changed (hash mismatch)")
            prev, n = claimed, n + 1
    return Verdict(n, prev)
