"""Which transfer targets an agent may send a caller to: the toll-fraud guard on REFER (sans-IO).

An LLM or speech-to-speech model picks a transfer target from what the caller says, so a caller could talk it into
a premium-rate or international number. When the call's route has `transfer_allowed`, a target must match one of
its patterns, whoever asked for it (a scripted `transfer:` step, an LLM tool, a speech-to-speech model); without
it, only the targets the agent's own config names are allowed (a scripted `transfer:` step, a dialog's `transfer:`
action, `transfer_target`: the operator wrote those). Anything else is refused before a REFER goes out. Targets
are compared without their `<>`, URI parameters and headers (`sip:+442071234567@pbx.example.com`), so a pattern
should name the host too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agents.config import AgentConfig, HybridAgentConfig, hybrid_parts
from telephony.config import Config


def target_key(uri: str) -> str:
    """The part of a transfer target that is checked: scheme, user and host[:port]."""
    uri = uri.strip().removeprefix("<").split(">", 1)[0]
    return re.split(r"[;?]", uri, maxsplit=1)[0]


def _named(node: Any) -> set[str]:
    if isinstance(node, dict):
        out = {target_key(v) for k, v in node.items() if k in ("transfer", "transfer_target") and isinstance(v, str)}
        for v in node.values():
            out |= _named(v)
        return out
    if isinstance(node, list):
        return set().union(*(_named(v) for v in node)) if node else set()
    return set()


def configured_targets(name: str, agents: Mapping[str, AgentConfig]) -> frozenset[str]:
    """The transfer targets agent `name`'s config names (for a hybrid, those of its cascade and S2S parts)."""
    cfg = agents[name]
    found = _named(cfg.model_dump())
    if isinstance(cfg, HybridAgentConfig):
        cascade, s2s = hybrid_parts(name, cfg, agents)
        found |= _named(cascade.model_dump()) | _named(s2s.model_dump())
    return frozenset(found)


@dataclass(frozen=True)
class TransferGuard:
    configured: frozenset[str] = frozenset()
    """The targets the agent's config names: the allowed ones when there are no `patterns`."""
    patterns: tuple[str, ...] = ()
    """The route's `transfer_allowed`: exact targets or regular expressions in slashes (`/^sip:\\+4420/`)."""

    def refusal(self, uri: str) -> str:
        """"" when the caller may be transferred to `uri`, else why not."""
        key = target_key(uri)
        if not self.patterns:
            return "" if key in self.configured else (
                f"{key} is not a transfer target of the agent's config (the route has no transfer_allowed)")
        for p in self.patterns:
            if (re.search(p[1:-1], key) is not None) if len(p) > 1 and p[0] == p[-1] == "/" else p == key:
                return ""
        return f"{key} matches no transfer_allowed pattern of the call's route"


def guard_for(config: Config, called: str, agent: str) -> TransferGuard:
    """The guard of a call to `called` answered by `agent` (the route's patterns: the first global route that
    matches `called`, as for announcements and recordings)."""
    route = config.route_for(called)
    return TransferGuard(configured_targets(agent, config.agents),
                         tuple(route.transfer_allowed) if route is not None else ())
