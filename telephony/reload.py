"""Config reload (SIGHUP), the decisions: which sections a running gateway takes from a new config, which ones
need a restart, and which trunks need new SIP accounts. Pure; the gateway applies what this returns.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from telephony.config import Config, TrunkConfig

RELOADABLE = ("agents", "routes", "trunks", "spend", "prices")
"""Sections a reload applies; the others (ports, transports, records, ...) are fixed while the process runs."""
_CALL_TIME = {"routes", "allow", "inbound_auth", "allowed", "max_calls_per_min", "dtmf_mode"}
"""Trunk options read per call: changing them keeps the trunk's accounts (and its registration)."""


class ReloadRefusedError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def merge(running: Config, new: Config) -> tuple[Config, list[str]]:
    """The running config with the reloadable sections of `new`, and the names of the other sections that differ
    (kept as they are until a restart). Raises ReloadRefusedError when a kept section no longer fits, e.g. a
    transport's agent the new config removes."""
    # only what each file set: a dump with defaults does not always validate again (options for other kinds)
    kept = running.model_dump(by_alias=True, exclude_unset=True, exclude=set(RELOADABLE))
    data = {**kept, **new.model_dump(by_alias=True, exclude_unset=True, include=set(RELOADABLE))}
    try:
        merged = Config.model_validate(data)
    except ValidationError as e:
        raise ReloadRefusedError([f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: "
                                  f"{err['msg'].removeprefix('Value error, ')} (a section kept until restart "
                                  "does not fit the new one)" for err in e.errors()]) from None
    restart = [k for k in Config.model_fields if k not in RELOADABLE and getattr(running, k) != getattr(new, k)]
    return merged, restart


def account_settings(t: TrunkConfig) -> dict[str, Any]:
    """What a trunk's SIP accounts are made of: a change here replaces them (and re-registers)."""
    return {**t.model_dump(exclude=_CALL_TIME), "places_calls": bool(t.allowed)}


def trunk_changes(running: Config, new: Config) -> tuple[list[str], list[str]]:
    """Trunks whose accounts go (removed or changed) and trunks whose accounts are made (added or changed)."""
    gone = [n for n, t in running.trunks.items()
            if n not in new.trunks or account_settings(t) != account_settings(new.trunks[n])]
    made = [n for n in new.trunks if n not in running.trunks or n in gone]
    return gone, made


def agent_changes(running: Config, new: Config) -> list[str]:
    """Agents that need a new factory: added, changed, or hybrids (whose parts may have changed)."""
    return [n for n, a in new.agents.items()
            if running.agents.get(n) != a or getattr(a, "type", "") == "hybrid"]
