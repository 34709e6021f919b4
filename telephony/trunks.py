"""SIP trunks on the pjsua thread: one pjsua2 Account per trunk that registers with digest auth, its state logged
as `trunk_state` events and kept in a small JSON status file for `voicegate trunks`.

The decisions (when to retry, what the state is) are `Registration`'s; this module only wires pjsua's callbacks
to it and writes what it says. Everything here runs on the pjsua thread and catches every exception.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pjsua2 as pj

from telephony.config import Config, TrunkConfig
from telephony.digest import nonce_key
from telephony.inbound import resolve_sources
from telephony.keepalive import Keepalive, OptionsPinger
from telephony.logs import event, event_at
from telephony.registration import Registration
from telephony.reload import trunk_changes
from telephony.sip_uri import parse_sip_uri
from telephony.trunk_tls import TrunkTransports

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SRTP_USE = {"off": pj.PJMEDIA_SRTP_DISABLED, "optional": pj.PJMEDIA_SRTP_OPTIONAL,
            "mandatory": pj.PJMEDIA_SRTP_MANDATORY}


def _with_lr(uri: str) -> str:
    return uri if ";lr" in uri else uri + ";lr"


def registrar_uri(t: TrunkConfig) -> str:
    """The registrar URI with the trunk's transport made explicit (pjsip picks the transport from it)."""
    if t.transport == "udp" or "transport=" in t.registrar.lower():
        return t.registrar
    return f"{t.registrar};transport={t.transport}"


def _account_config(t: TrunkConfig, ac: Any, user: str, registers: bool, transport: int | None = None) -> Any:
    """`ac` (the gateway's media settings) set up for trunk `t` as `user`. A `sips:` registrar makes the account's
    URI `sips:`, so that its REGISTER and calls (to `sips:` URIs) carry a `sips:` Contact (RFC 3261 8.1.1.8, 10.2.1:
    pjsua writes one only for a `sips:` account). `transport`: the TLS transport its connections go through
    (telephony/trunk_tls.py)."""
    reg = parse_sip_uri(t.registrar)
    ac.idUri = f"{reg.scheme}:{user}@{reg.host}"
    if transport is not None:
        ac.sipConfig.transportId = transport
    rc = ac.regConfig
    rc.registrarUri = registrar_uri(t) if registers else ""
    rc.registerOnAdd = registers
    rc.timeoutSec = t.expiry_s
    rc.retryIntervalSec = 0  # Registration decides the retries
    ac.mediaConfig.srtpUse = SRTP_USE[t.srtp]
    ac.mediaConfig.srtpSecureSignaling = 0  # SDES keys also over UDP/TCP signalling, as carriers send them
    ac.sipConfig.authCreds.append(pj.AuthCredInfo("digest", t.realm, t.username, 0, t.password))
    if t.outbound_proxy:
        ac.sipConfig.proxies.append(_with_lr(t.outbound_proxy))
    if t.contact:  # as given: neither rewritten from the Via the registrar saw nor marked for RFC 5626 outbound
        ac.sipConfig.contactForced = f"<{t.contact}>"
        ac.natConfig.contactRewriteUse = 0
        ac.natConfig.sipOutboundUse = 0
    return ac


class TrunkAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, name: str, trunks: TrunkSet, incoming: Callable[[Any, Any], None]) -> None:
        super().__init__()
        self.trunk = name
        self._trunks = trunks
        self._incoming = incoming
        self.retired = False
        """Replaced by a reload: its unregistration is not the trunk's state any more."""

    def onRegStarted(self, prm: Any) -> None:  # noqa: N802
        if self.retired:
            return
        try:
            self._trunks.on_started(self.trunk, bool(prm.renew))
        except Exception as e:
            event("sip_callback_error", trunk=self.trunk, where="onRegStarted", error=repr(e))

    def onRegState(self, prm: Any) -> None:  # noqa: N802
        if self.retired:
            return
        try:
            self._trunks.on_result(self.trunk, int(prm.code), str(prm.reason), int(prm.expiration))
        except Exception as e:
            event("sip_callback_error", trunk=self.trunk, where="onRegState", error=repr(e))

    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802
        try:
            self._incoming(self, prm)
        except Exception as e:
            event("sip_callback_error", trunk=self.trunk, where="onIncomingCall", error=repr(e))


class TrunkSet:
    """Every configured trunk: its account, registration state and allowed sources."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.status_path = Path(config.trunk_status_path)
        self.regs = {n: Registration(n, t.retry_min_s, t.retry_max_s) for n, t in config.trunks.items()}
        self.sources: dict[str, list[Network]] = {}
        self.secret = nonce_key()
        """Key of the nonces that challenge inbound calls (telephony/digest.py): the supervisor's for its workers,
        else new with each process."""
        self.accounts: dict[str, TrunkAccount] = {}
        self.callers: dict[str, TrunkAccount] = {}
        """The account each trunk that may place calls (`allowed`) places them from."""
        self._retired: list[TrunkAccount] = []
        self.keepalives: dict[str, Keepalive] = {}
        self._pings: dict[int, tuple[str, Keepalive]] = {}
        """Pings under way by token: a trunk replaced meanwhile keeps its old Keepalive, whose result is dropped."""
        self._token = 0
        self._pinger: OptionsPinger | None = None
        self._base: Callable[[], Any] = lambda: None
        self._incoming: Callable[[Any, Any], None] = lambda account, prm: None
        self._tls: TrunkTransports | None = None

    def start(self, base: Callable[[], Any], incoming: Callable[[Any, Any], None], tls: TrunkTransports) -> None:
        """Create one account per trunk (pjsua thread, after libStart); `base()` gives a fresh AccountConfig with
        the gateway's media settings; `tls` gives the transport each TLS trunk is bound to."""
        self._base, self._incoming, self._tls = base, incoming, tls
        self._pinger = OptionsPinger(pj._pjsua2.__file__, self._pinged)
        for name, t in self.config.trunks.items():
            self._add(name, t)
        self.write(running=True)

    def _add(self, name: str, t: TrunkConfig) -> None:
        self.sources[name] = resolve_sources(t)
        acc = TrunkAccount(name, self, self._incoming)
        self.accounts[name] = acc
        tid = self._tls.transport_for(name, t) if self._tls is not None else None
        acc.create(_account_config(t, self._base(), t.username, t.registers, tid), False)
        if t.allowed and t.caller_id and t.caller_id != t.username:
            # pjsua puts an account's own URI in From: the caller ID needs an account of its own, which
            # never registers (the registration's address stays the username)
            caller = TrunkAccount(name, self, self._incoming)
            caller.create(_account_config(t, self._base(), t.caller_id, False, tid), False)
            self.callers[name] = caller
        elif t.allowed:
            self.callers[name] = acc
        if t.keepalive_s is not None:
            self.keepalives[name] = Keepalive(name, t.keepalive_s)
        event("trunk_added", trunk=name, registrar=t.registrar, username=t.username, transport=t.transport,
              srtp=t.srtp, expiry_s=t.expiry_s, register=t.registers, sources=[str(n) for n in self.sources[name]],
              keepalive_s=t.keepalive_s, tls_cert=t.tls.cert_file if t.tls is not None else None)

    def reconfigure(self, config: Config, calls_live: bool) -> None:
        """Take a reloaded config (pjsua thread): trunks added, removed or with new account settings get new
        accounts; the old ones unregister now and are deleted once no call is live (pjsua's calls refer to their
        account). Call-time options (routes, allow, allowed) apply from the next call."""
        gone, made = trunk_changes(self.config, config)
        self.config = config
        for name in gone:
            accs = {id(a): a for a in (self.accounts.pop(name, None), self.callers.pop(name, None)) if a is not None}
            for acc in accs.values():
                acc.retired = True
                with contextlib.suppress(pj.Error):
                    acc.setRegistration(False)
                self._retired.append(acc)
            self.regs.pop(name, None)
            self.sources.pop(name, None)
            self.keepalives.pop(name, None)
            event("trunk_removed", trunk=name, replaced=name in made)
        for name in made:
            t = config.trunks[name]
            self.regs[name] = Registration(name, t.retry_min_s, t.retry_max_s)
            self._add(name, t)
        for name, t in config.trunks.items():
            if name not in made:
                self.sources[name] = resolve_sources(t)
        self.sweep(calls_live)
        self.write(running=True)

    def sweep(self, calls_live: bool) -> None:
        """Delete the retired accounts once no call is live (pjsua thread)."""
        if calls_live:
            return
        for acc in self._retired:
            with contextlib.suppress(pj.Error):
                acc.shutdown()
        self._retired.clear()

    def on_started(self, name: str, renew: bool) -> None:
        self._emit(self.regs[name].started(time.monotonic(), renew))

    def on_result(self, name: str, code: int, reason: str, expires_s: int) -> None:
        self._emit(self.regs[name].result(time.monotonic(), code, reason, expires_s))

    def tick(self) -> None:
        """Periodic (pjsua thread): re-register the trunks whose backoff has run out."""
        now = time.monotonic()
        for name, reg in self.regs.items():
            acc = self.accounts.get(name)
            if acc is None or not reg.due(now):
                continue
            event("trunk_retry", trunk=name, failures=reg.failures)
            try:
                acc.setRegistration(True)
            except pj.Error as e:  # e.g. a REGISTER still in progress: counts as a failure, so backoff grows
                self.on_result(name, 500, f"cannot re-register: {e.info()}", 0)
        for name, ka in self.keepalives.items():
            if expired := ka.expire(now):  # a late callback for it finds no entry and is dropped
                self._pings = {t: p for t, p in self._pings.items() if p[1] is not ka}
            for ev in expired:
                event("trunk_keepalive", **ev)
                self.write(running=True)
            if name in self.accounts and self._pinger is not None and ka.due(now):
                self._token += 1
                self._pings[self._token] = (name, ka)
                status = self._pinger.send(self.accounts[name].getId(), registrar_uri(self.config.trunks[name]),
                                           self._token, ka.timeout_s)
                if status != 0:  # pjsip did not send it: no callback follows
                    self._pinged(self._token, 503, False)

    def _pinged(self, token: int, code: int, answered: bool) -> None:
        name, ka = self._pings.pop(token, ("", None))
        if ka is None or self.keepalives.get(name) is not ka:
            return
        changes = ka.result(time.monotonic(), code, answered)
        # every ping's outcome, for the round-trip metric; logged only at debug level (one line per ping)
        event_at(logging.DEBUG, "trunk_keepalive_ping", trunk=name, code=code, rtt_ms=ka.rtt_ms if answered else None)
        for ev in changes:
            event("trunk_keepalive", **ev)
            self.write(running=True)

    def trunk_of(self, account: Any) -> str:
        return str(getattr(account, "trunk", ""))

    def shutdown(self) -> None:
        for acc in [*self.accounts.values(), *self.callers.values(), *self._retired]:
            with contextlib.suppress(pj.Error):
                acc.shutdown()
        self.accounts.clear()
        self.callers.clear()
        self._retired.clear()
        if self.regs:
            self.write(running=False)

    def _emit(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            event("trunk_state", **ev)
        if events:
            self.write(running=True)

    def write(self, running: bool) -> None:
        """Replace the status file atomically; a write error is logged, never fatal."""
        now, wall = time.monotonic(), time.time()
        trunks = [r.status(now, wall) for r in self.regs.values()]
        for t in trunks:
            if (ka := self.keepalives.get(t["trunk"])) is not None:
                t["keepalive"] = ka.status()
        doc = {"updated": round(wall, 3), "pid": os.getpid(), "running": running, "trunks": trunks}
        tmp = self.status_path.with_name(f".{self.status_path.name}.{os.getpid()}")
        try:
            self.status_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
            os.replace(tmp, self.status_path)
        except OSError as e:
            event("trunk_status_error", path=str(self.status_path), error=e.strerror or str(e))
