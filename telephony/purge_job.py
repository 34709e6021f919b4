"""The retention purge run by `voicegate serve` itself: at start, then every `records.purge_every_h`, so that calls
past their `retention_days` go without a cron job running `voicegate purge`. The single gateway runs it, or worker
0 under `--workers` (the workers share one records database). Each run reads the current config, so a reload
that sets or changes `retention_days` applies from the next run."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

from telephony.config import Config
from telephony.logs import event
from telephony.retention import purge


async def purge_now(config: Config) -> None:
    """One purge, logged as `records_purged` (or `records_purge_failed`); nothing without any `retention_days`."""
    if config.records.retention_days is None and all(r.retention_days is None for r in config.routes):
        return
    if not Path(config.records.path).exists():
        return  # no call recorded yet
    try:
        out = await asyncio.to_thread(purge, config)
    except (OSError, sqlite3.Error) as e:
        why = (e.strerror or str(e)) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        event("records_purge_failed", path=config.records.path, error=why)
        return
    event("records_purged", calls=out.calls, files_removed=out.files_removed, audit_seq=out.audit_seq,
          errors=out.errors)


async def purge_every(current: Callable[[], Config], stop: asyncio.Event) -> None:
    """Purge with the `current()` config now and every `records.purge_every_h` until `stop` is set."""
    while not stop.is_set():
        config = current()
        await purge_now(config)
        try:
            async with asyncio.timeout(config.records.purge_every_h * 3600):
                await stop.wait()
        except TimeoutError:
            pass
