"""Removing calls for good: `erase` (one caller's, on request) and `purge` (past their route's retention), each
deleting the call records and the recording and transcript files they name, then writing an audit entry."""

from __future__ import annotations

import getpass
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telephony import audit, records
from telephony.config import Config

DAY_S = 86400.0


@dataclass
class Removal:
    calls: list[str]
    files_removed: int = 0
    errors: list[str] = field(default_factory=list)
    """A file that could not be removed, or the audit entry that could not be written."""
    audit_seq: int | None = None


def _remove_files(removed: Sequence[records.Record]) -> Removal:
    out = Removal([str(r.get("call")) for r in removed])
    for rec in removed:
        for key in ("recording", "transcript", "sip_trace", "pcap"):
            if not rec.get(key):
                continue
            path = Path(str(rec[key]))
            try:
                path.unlink()
                out.files_removed += 1
            except FileNotFoundError:
                pass
            except OSError as e:
                out.errors.append(f"cannot remove {path}: {e.strerror or e}")
    return out


def _audit(path: Path, out: Removal, action: str, **fields: Any) -> Removal:
    try:
        entry = audit.append(path, action, calls=out.calls, files_removed=out.files_removed, by=getpass.getuser(),
                             **fields)
        out.audit_seq = int(entry["seq"])
    except (OSError, audit.AuditError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        out.errors.append(f"cannot write the audit entry to {path}: {why}")
    return out


def erase(records_path: Path, audit_path: Path, number: str, reason: str = "") -> Removal:
    """Delete a caller's calls; the audit entry keeps the SHA-256 of the number, not the number. Raises OSError or
    sqlite3.Error when the records cannot be changed (then nothing was removed)."""
    out = _remove_files(records.erase_caller(records_path, number))
    return _audit(audit_path, out, "erase", caller_sha256=hashlib.sha256(number.encode()).hexdigest(), reason=reason)


def purge(config: Config, now: float | None = None) -> Removal:
    """Delete the calls older than their route's `retention_days` (or `records.retention_days`)."""
    now = time.time() if now is None else now
    days = [d for d in (config.records.retention_days, *(r.retention_days for r in config.routes)) if d is not None]
    if not days:
        return Removal([])

    def expired(called: str, start: float) -> bool:
        keep = config.retention_days(called)
        return keep is not None and start < now - keep * DAY_S

    removed = records.purge(Path(config.records.path), now - min(days) * DAY_S, expired)
    return _audit(Path(config.records.audit_path), _remove_files(removed), "purge")
