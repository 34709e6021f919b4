"""Outbound calls, the decisions: which trunk, which request URI, which caller ID, and whether the number may be
dialled at all (the toll-fraud guard). Pure: the control endpoint asks, the SIP stack places what this returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from telephony.config import Config
from telephony.sip_uri import parse_sip_uri

_NUMBER = re.compile(r"\+?[0-9*#]{1,32}")


class DialRefusedError(Exception):
    """A call that will not be placed: `status` is the HTTP status the control endpoint answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class AmdOptions:
    """Call progress on an outbound call: the agent starts only when a person answers; an intercept (SIT) hangs
    up; a machine is hung up on (`machine: hangup`) or gets `message` after its beep (`machine: message`)."""

    machine: str = "hangup"
    message: str = ""

    def __post_init__(self) -> None:
        if self.machine not in ("hangup", "message"):
            raise DialRefusedError(400, f"amd.machine is hangup or message, not {self.machine!r}")
        if self.machine == "message" and not self.message.strip():
            raise DialRefusedError(400, "amd.machine: message needs the amd.message text to leave")


@dataclass(frozen=True)
class DialPlan:
    number: str
    """The dialled number or SIP URI, as asked."""
    uri: str
    """The INVITE's request URI."""
    trunk: str
    """The trunk the call goes out on ("" for a SIP URI dialled directly)."""
    caller_id: str
    agent: str
    call_id: str = ""
    """The SIP Call-ID, once the INVITE is out."""
    amd: AmdOptions | None = None


def plan_dial(config: Config, number: str, agent: str, trunk: str | None = None) -> DialPlan:
    """Where a call to `number` goes and as whom; raise DialRefusedError saying why it may not be placed."""
    if agent not in config.agents:
        raise DialRefusedError(404, f"unknown agent {agent!r} (configured: {', '.join(sorted(config.agents))})")
    if number.startswith(("sip:", "sips:")):
        return _plan_uri(config, number, agent, trunk)
    if not _NUMBER.fullmatch(number):
        raise DialRefusedError(400, f"{number!r} is not a number (digits, * and #, an optional leading +) or a SIP URI")
    if trunk is None:
        placing = [n for n, t in config.trunks.items() if t.allowed]
        if len(placing) != 1:
            which = f"one of {', '.join(placing)}" if placing else "none has `allowed` numbers"
            raise DialRefusedError(400, f"name the trunk to dial {number} on ({which})")
        trunk = placing[0]
    t = config.trunks.get(trunk)
    if t is None:
        known = ", ".join(sorted(config.trunks)) or "none"
        raise DialRefusedError(404, f"unknown trunk {trunk!r} (configured: {known})")
    if not t.allows(number):
        raise DialRefusedError(403, f"{number} is not allowed on trunk {trunk} (trunks.{trunk}.allowed: "
                               f"{', '.join(t.allowed) or 'none'})")
    reg = parse_sip_uri(t.registrar)
    host = f"[{reg.host}]" if ":" in reg.host else reg.host
    port = f":{reg.port}" if reg.port else ""
    params = "" if t.transport == "udp" else f";transport={t.transport}"
    return DialPlan(number, f"{reg.scheme}:{number}@{host}{port}{params}", trunk, t.caller_id or t.username, agent)


def _plan_uri(config: Config, uri: str, agent: str, trunk: str | None) -> DialPlan:
    if trunk is not None:
        raise DialRefusedError(400, "a SIP URI is dialled directly: leave out the trunk, or dial a number on it")
    try:
        parse_sip_uri(uri)
    except ValueError as e:
        raise DialRefusedError(400, str(e)) from None
    if uri.lower().startswith("sips:") and "tls" not in config.sip.transports:
        raise DialRefusedError(400, f"{uri} needs SIP over TLS: sip.transports has no tls")
    allowed = config.control.allow_uris if config.control is not None else []
    if not any(re.fullmatch(p, uri) for p in allowed):
        raise DialRefusedError(403, f"{uri} is not allowed (control.allow_uris: {', '.join(allowed) or 'none'})")
    return DialPlan(uri, uri, "", "voicegate", agent)
