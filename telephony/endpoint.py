"""The pjsua2 Endpoint on its own thread, which owns every pjsua2 object.

Rules (DESIGN §2): one Endpoint per process; `threadCnt=0` and `mainThreadOnly=True`, so every SIP callback runs
inside this thread's `libHandleEvents` loop; other threads never call pjsua2 but `submit()` a function that the
loop runs; call objects are released by the loop after pjsua has finished with the disconnect; before
`libDestroy` every pjsua2 object is dropped and collected, or the process crashes at exit.
"""

from __future__ import annotations

import contextlib
import gc
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import pjsua2 as pj

from telephony.admission import SipGate
from telephony.call import SipCall
from telephony.call_ids import Graveyard, owns
from telephony.client_certs import TlsPeers, client_cert_problem
from telephony.config import Config, DtmfMode, SipTlsConfig
from telephony.consult import Consultations
from telephony.errors import PjsuaBuildError, SipStartError
from telephony.inbound import SOURCE_HEADER, Invite, admit, caller_source, source_ip
from telephony.invite_rate import InviteLimits
from telephony.logs import event, event_at
from telephony.media_port import PortPool, check_frame_layout
from telephony.nat import DialogRoutes, nat_route
from telephony.outbound import DialRefusedError
from telephony.pjsua_c import max_call_count
from telephony.sip_headers import call_metadata, original_called, request_parts
from telephony.sip_trace import MESSAGE_LEVEL, SipTrace
from telephony.sips import needs_sips_contact
from telephony.trunk_tls import TrunkTransports, fill_tls
from telephony.trunks import TrunkSet

EXPECTED_MAX_CALLS = 4
CODEC_IDS = {"G722": "G722/16000", "PCMU": "PCMU/8000", "PCMA": "PCMA/8000"}
_USER_RE = re.compile(r"sips?:([^@;>]+)@")
_VIA = re.compile(r"^(?:Via|v)[ \t]*:[ \t]*SIP/2\.0/([A-Za-z]+)", re.I | re.M)


def _over_tls(message: str) -> bool:
    """The request's top Via says TLS (the connection it came over is looked up by its source address)."""
    m = _VIA.search(message)
    return m is not None and m.group(1).upper() == "TLS"


@dataclass(frozen=True)
class Refusal:
    code: int
    headers: dict[str, str] = field(default_factory=dict)


class IncomingHandler(Protocol):
    def on_incoming(self, call: SipCall, called: str, caller: str) -> Refusal | None:
        """None to accept (the handler answers 200 later), or how to refuse the call."""
        ...


def called_user(uri: str) -> str:
    m = _USER_RE.search(uri)
    return m.group(1) if m else ""


POLL_MS = 20
"""How long the pjsua thread's `libHandleEvents` waits: also the longest a submitted command or a callback that
pjsua2 defers to this thread waits. SIP packets and pjsip's timers wake it at once. Each wake-up costs 65-90 us of
CPU on this kind of machine, so with a 10 ms poll an idle gateway's pjsua thread used 9.3-10 ms of CPU per second,
and 5.2 ms with 20 ms (measured, one run each, load 8-10)."""


def compiled_max_calls() -> int:
    """The call limit the loaded pjsua library really applies (after libInit)."""
    return max_call_count()


def _tls_settings(tls: Any, cfg: SipTlsConfig) -> None:
    fill_tls(tls, cfg.cert_file, cfg.key_file, cfg.ca_file, cfg.verify_server)
    tls.verifyClient = cfg.require_client_cert
    tls.requireClientCert = cfg.require_client_cert


class _Account(pj.Account):  # type: ignore[misc]
    def __init__(self, stack: SipStack) -> None:
        super().__init__()
        self.stack = stack

    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802
        try:
            self.stack._incoming(self, prm)
        except Exception as e:
            event("sip_callback_error", where="onIncomingCall", error=repr(e))


class _Endpoint(pj.Endpoint):  # type: ignore[misc]
    def __init__(self, stack: SipStack) -> None:
        super().__init__()
        self.stack = stack

    def onTransportState(self, prm: Any) -> None:  # noqa: N802
        try:
            if prm.type.upper().startswith("TLS"):
                self.stack._tls_state(prm)
        except Exception as e:
            event("sip_callback_error", where="onTransportState", error=repr(e))

    def onSelectAccount(self, prm: Any) -> None:  # noqa: N802
        try:
            prm.accountIndex = self.stack._select_account(int(prm.accountIndex), str(prm.rdata.wholeMsg))
        except Exception as e:
            event("sip_callback_error", where="onSelectAccount", error=repr(e))


class _LogWriter(pj.LogWriter):  # type: ignore[misc]
    def __init__(self, level: int, trace: SipTrace | None) -> None:
        super().__init__()
        self.level = level
        self.trace = trace

    def write(self, entry: Any) -> None:
        msg = str(entry.msg).rstrip()
        if not msg or (self.trace is not None and entry.level >= MESSAGE_LEVEL and self.trace.write(msg)):
            return
        if entry.level <= self.level:
            event_at(30 if entry.level <= 2 else 10, "pjsip", pjlevel=int(entry.level), msg=msg[-400:])


class SipStack:
    def __init__(self, config: Config, handler: IncomingHandler) -> None:
        self.config = config
        self.handler = handler
        self.calls: dict[int, SipCall] = {}
        self.max_calls = EXPECTED_MAX_CALLS
        self._cmds: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._released: list[SipCall] = []
        self._ended = Graveyard()
        """Released calls, each destroyed once its pjsua call id is free or still its own (telephony/call_ids.py)."""
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._periodic: list[tuple[float, float, Callable[[], None]]] = []
        self.ep: Any = None
        self.account: Any = None
        self.sips_account: Any = None
        """The gateway's account for requests that need a `sips:` Contact (telephony/sips.py); with TLS only."""
        self._logwriter: Any = None
        self.ports = PortPool()
        self.port = config.sip.port
        self.trunks = TrunkSet(config)
        self.tls_peers = TlsPeers()
        """Client certificates of the open TLS connections, for trunks that require one (telephony/client_certs)."""
        r = config.sip.invite_rate
        self.limits = InviteLimits(config.sip.max_message_bytes, r.per_source if r else None, r.window_s if r else 0)
        self.draining = False
        """Set when the gateway drains: new INVITEs and OPTIONS get 503 (telephony/admission.py)."""
        self.gate: SipGate | None = None
        self._routes: DialogRoutes | None = None
        self.every(0.25, self._trunk_tick)  # trunks may come with a reloaded config
        self.consults = Consultations(self)
        """Attended transfers under way (telephony/consult.py)."""
        self.every(1.0, self.consults.tick)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="pjsua", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SipStartError(f"pjsua did not start within {timeout:.0f} s")
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the pjsua thread (from any thread)."""
        self._cmds.put(fn)

    def every(self, interval_s: float, fn: Callable[[], None]) -> None:
        """Run `fn` on the pjsua thread every `interval_s` seconds (register before start)."""
        self._periodic.append((interval_s, time.monotonic() + interval_s, fn))

    def _run(self) -> None:
        try:
            self._init()
        except BaseException as e:
            self._error = e if isinstance(e, (PjsuaBuildError, SipStartError)) else SipStartError(f"pjsua: {e}")
            self._ready.set()
            self._destroy()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                self.ep.libHandleEvents(POLL_MS)
                self._drain()
        finally:
            self._destroy()

    def _drain(self) -> None:
        while True:
            try:
                fn = self._cmds.get_nowait()
            except queue.Empty:
                break
            try:
                fn()
            except Exception as e:
                event("sip_command_error", error=repr(e))
        if self._released:
            # pjsua is done with these calls' disconnects: the objects go once no later call has their id
            for call in self._released:
                self.calls.pop(call.key, None)
                self._ended.bury(call)
            self._released.clear()
        self._ended.sweep()
        now = time.monotonic()
        for i, (interval, due, fn) in enumerate(self._periodic):
            if now >= due:
                self._periodic[i] = (interval, now + interval, fn)
                try:
                    fn()
                except Exception as e:
                    event("sip_periodic_error", error=repr(e))

    # -- setup --------------------------------------------------------------------------------------------
    def _init(self) -> None:
        cfg = self.config
        check_frame_layout()
        self.ep = _Endpoint(self)
        self.ep.libCreate()
        ec = pj.EpConfig()
        ec.uaConfig.threadCnt = 0
        ec.uaConfig.mainThreadOnly = True
        ec.uaConfig.maxCalls = EXPECTED_MAX_CALLS
        ec.uaConfig.userAgent = cfg.sip.user_agent
        if cfg.sip.outbound_proxy:  # pjsua puts it first in every account's route set
            proxy = cfg.sip.outbound_proxy
            ec.uaConfig.outboundProxies.append(proxy if ";lr" in proxy else f"{proxy};lr")
        level = 3 if cfg.log_level == "debug" else 2
        trace = SipTrace(cfg.records.sip_trace_path) if cfg.records.sip_trace else None
        self._logwriter = _LogWriter(level, trace)
        ec.logConfig.writer = self._logwriter
        ec.logConfig.level = MESSAGE_LEVEL if trace else level
        ec.logConfig.msgLogging = trace is not None
        ec.logConfig.consoleLevel = ec.logConfig.level  # pjsua2 hands the writer only entries up to this level
        ec.logConfig.decor = 0
        mc = ec.medConfig
        mc.clockRate = 16000
        mc.sndClockRate = 16000
        mc.channelCount = 1
        mc.audioFramePtime = 20
        mc.ptime = 20
        mc.noVad = True
        mc.ecTailLen = 0
        mc.sndAutoCloseTime = -1  # one clock thread for the process: media_port pins its Python thread state
        mc.jbInit = cfg.media.jitter_buffer_ms
        mc.jbMinPre = 20
        mc.jbMaxPre = max(cfg.media.jitter_buffer_ms * 2, 60)
        self.ep.libInit(ec)

        self.max_calls = compiled_max_calls()
        if self.max_calls != EXPECTED_MAX_CALLS:
            raise PjsuaBuildError(
                f"pjsua2 allows {self.max_calls} calls per process, voicegate assumes {EXPECTED_MAX_CALLS}: "
                "install pjsua2-python==2.15.1.post1 or adjust EXPECTED_MAX_CALLS after testing the new build"
            )
        full = cfg.workers.when_full
        self.gate = SipGate(pj._pjsua2.__file__, self.max_calls, lambda: self.draining, int(full.reply),
                            full.retry_after_s)
        self.gate.install()
        self._routes = DialogRoutes(pj._pjsua2.__file__)

        tls_transport: int | None = None
        for kind in cfg.sip.transports:
            tc = pj.TransportConfig()
            tc.port = cfg.sip.port
            tc.boundAddress = cfg.sip.listen
            if cfg.sip.public_address:
                tc.publicAddress = cfg.sip.public_address
            ttype = pj.PJSIP_TRANSPORT_UDP if kind == "udp" else pj.PJSIP_TRANSPORT_TCP
            if kind == "tls" and cfg.sip.tls is not None:
                ttype, tc.port = pj.PJSIP_TRANSPORT_TLS, cfg.sip.tls.port
                _tls_settings(tc.tlsConfig, cfg.sip.tls)
            try:
                tid = self.ep.transportCreate(ttype, tc)
            except pj.Error as e:
                raise SipStartError(
                    f"cannot listen on {kind} {cfg.sip.listen}:{tc.port}: {e.info()}"
                ) from None
            if ttype == pj.PJSIP_TRANSPORT_TLS:
                tls_transport = tid
        self.ep.libStart()
        self.ep.audDevManager().setNullDev()
        self._set_codecs()

        ac = self._account_config()
        host = cfg.sip.public_address or cfg.sip.listen
        ac.idUri = f"sip:voicegate@{host}:{cfg.sip.port}"
        if cfg.sip.contact:
            ac.sipConfig.contactForced = f"<{cfg.sip.contact}>"
        self.account = _Account(self)
        self.account.create(ac, True)
        if tls_transport is not None and cfg.sip.tls is not None:
            ac = self._account_config()
            ac.idUri = f"sips:voicegate@{host}:{cfg.sip.tls.port}"
            ac.sipConfig.transportId = tls_transport
            self.sips_account = _Account(self)
            self.sips_account.create(ac)
        self.trunks.start(self._account_config, self._incoming, TrunkTransports(self.ep, cfg.sip, tls_transport))
        event("sip_started", listen=cfg.sip.listen, port=cfg.sip.port, transports=cfg.sip.transports,
              max_calls=self.max_calls, pjsip=self.ep.libVersion().full)

    def _account_config(self) -> Any:
        """An AccountConfig with the gateway's media and session-timer settings (every account shares them)."""
        cfg = self.config
        ac = pj.AccountConfig()
        ac.mediaConfig.transportConfig.port = cfg.rtp.port_min
        ac.mediaConfig.transportConfig.portRange = cfg.rtp.port_max - cfg.rtp.port_min
        if media_address := cfg.rtp.public_address or cfg.sip.public_address:
            ac.mediaConfig.transportConfig.publicAddress = media_address
        ac.callConfig.timerUse = pj.PJSUA_SIP_TIMER_OPTIONAL
        ac.callConfig.timerSessExpiresSec = 1800
        return ac

    def _select_account(self, chosen: int, message: str) -> int:
        """The account for an incoming request pjsua gave to `chosen`: the gateway's `sips:` one when the answer
        needs a `sips:` Contact, its `sip:` one otherwise; a trunk's account stays (pjsua thread)."""
        if self.sips_account is None or self.account is None:
            return chosen
        own, secure = int(self.account.getId()), int(self.sips_account.getId())
        if chosen not in (own, secure):
            return chosen
        return secure if needs_sips_contact(message) else own

    def _set_codecs(self) -> None:
        wanted = [CODEC_IDS[c] for c in self.config.media.codecs]
        for ci in self.ep.codecEnum2():
            cid = str(ci.codecId)
            base = cid.rsplit("/", 1)[0] if cid.count("/") > 1 else cid
            prio = 0
            if base in wanted:
                prio = 250 - wanted.index(base)
            elif cid.startswith("telephone-event"):
                continue
            self.ep.codecSetPriority(cid, prio)

    # -- calls --------------------------------------------------------------------------------------------
    def _incoming(self, account: Any, prm: Any) -> None:
        call = SipCall(account, prm.callId, self._release, self.ports)
        ci = call.getInfo()
        call.call_id = str(ci.callIdString)
        call.codec_preference = self.config.media.codecs
        self.calls[call.key] = call
        called = called_user(str(ci.localUri)) or called_user(str(ci.localContact))
        caller = str(ci.remoteUri)
        packet_source = str(prm.rdata.srcAddress)
        message = str(prm.rdata.wholeMsg)
        call.sip_headers = call_metadata(message)
        call.source = caller_source(packet_source, call.sip_headers, self.config.sip.front_door)
        call.sip_headers.pop(SOURCE_HEADER, None)
        length = len(message.encode(errors="replace"))  # a mutated INVITE's bad UTF-8 comes as surrogates
        if (limit := self.limits.check(source_ip(call.source), length, time.monotonic())) is not None:
            event("call_refused", call=call.call_id, called=called, code=limit.code, reason=limit.reason,
                  source=call.source)
            self.answer(call.key, limit.code, headers=limit.headers or None)
            return
        adm = admit(self.config.trunks, self.trunks.sources, self.trunks.trunk_of(account), called, call.source,
                    Invite(*request_parts(message)), time.time(), self.trunks.secret, self.config.sip)
        call.trunk = adm.trunk
        call.nat_route = nat_route(message, packet_source)
        event("call_incoming", call=call.call_id, called=called, caller=caller, source=call.source, trunk=adm.trunk,
              authenticated=adm.authenticated, user=adm.user, original_called=original_called(call.sip_headers),
              sip_headers=call.sip_headers)
        trunk_tls = self.config.trunks[adm.trunk].tls if adm.trunk in self.config.trunks else None
        if not adm.refused and trunk_tls is not None and (why := client_cert_problem(
                adm.trunk, trunk_tls, _over_tls(message), self.tls_peers.cert_of(packet_source))):
            adm = replace(adm, refused=why)
        if adm.refused:
            code = 401 if adm.challenge else 403
            event("call_refused", call=call.call_id, called=called, code=code, reason=adm.refused,
                  source=call.source, trunk=adm.trunk)
            self.answer(call.key, code, headers={"WWW-Authenticate": adm.challenge} if adm.challenge else None)
            return
        refusal = self.handler.on_incoming(call, called, caller)
        if refusal is not None:
            self.answer(call.key, refusal.code, headers=refusal.headers)
        else:
            self.answer(call.key, 180)

    def _tls_state(self, prm: Any) -> None:
        handle = int(prm.hnd)
        if prm.state == pj.PJSIP_TP_STATE_CONNECTED and prm.tlsInfo.established:
            cert = prm.tlsInfo.remoteCertInfo
            self.tls_peers.connected(handle, str(prm.tlsInfo.remoteAddr), "" if cert.isEmpty() else str(cert.raw))
        elif prm.state != pj.PJSIP_TP_STATE_CONNECTED:
            self.tls_peers.disconnected(handle)

    def dial(self, trunk: str, uri: str, prepare: Callable[[SipCall], None]) -> SipCall:
        """Place a call to `uri` from `trunk`'s caller account (the gateway's own for ""); pjsua thread only.
        `prepare` sets the call's listener before the INVITE goes. Raises DialRefusedError if pjsua cannot.
        A `sips:` URI dialled directly goes from the gateway's `sips:` account, since pjsua writes a `sips:` Contact
        only for an account whose own URI is `sips:` (RFC 3261 8.1.1.8 wants one; telephony/sips.py)."""
        account = self.trunks.callers[trunk] if trunk else self.account
        if not trunk and uri.lower().startswith("sips:"):
            if self.sips_account is None:
                raise DialRefusedError(503, f"{uri} needs SIP over TLS: sip.transports has no tls")
            account = self.sips_account
        call = SipCall(account, pj.PJSUA_INVALID_ID, self._release, self.ports)
        call.codec_preference = self.config.media.codecs
        call.trunk = trunk
        prepare(call)
        self.calls[call.key] = call
        try:
            call.makeCall(uri, pj.CallOpParam(True))
        except pj.Error as e:
            self._released.append(call)
            raise DialRefusedError(503, f"pjsua cannot call {uri}: {e.info()}") from None
        call.call_id = str(call.getInfo().callIdString)
        return call

    def _trunk_tick(self) -> None:
        self.trunks.tick()
        self.trunks.sweep(bool(self.calls))

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config (pjsua thread): the next calls are admitted and routed by it."""
        self.config = config
        self.trunks.reconfigure(config, bool(self.calls))

    def _release(self, call: SipCall) -> None:
        self._released.append(call)

    # Calls are named by `SipCall.key` outside this thread: a SipCall referenced from another thread could be
    # freed there, and its destructor would call pjlib from an unregistered thread (the process aborts).
    def answer(self, key: int, code: int, reason: str = "", headers: dict[str, str] | None = None) -> None:
        """Answer (1xx/2xx) or refuse (3xx-6xx) an incoming call; pjsua thread only."""
        call = self.calls.get(key)
        if call is None or call.disconnected:
            return
        op = pj.CallOpParam(True)
        op.statusCode = code
        if reason:
            op.reason = reason
        for name, value in (headers or {}).items():
            h = pj.SipHeader()
            h.hName = name
            h.hValue = value
            op.txOption.headers.append(h)
        try:
            call.answer(op)
        except pj.Error as e:
            event("sip_answer_error", call=call.call_id, code=code, error=e.info())
            return
        if 200 <= code < 300 and call.nat_route:
            self._route_to_source(call)

    def _route_to_source(self, call: SipCall) -> None:
        """Send the call's in-dialog requests to where its INVITE came from (the caller is behind NAT)."""
        done = (call.dialog is not None and self._routes is not None
                and self._routes.set_route(*call.dialog, call.nat_route or ""))
        event("call_nat", call=call.call_id, source=call.source, route=call.nat_route, applied=done)

    def release_unacked(self, key: int) -> None:
        """End a call whose 2xx got no ACK at once: a BYE would wait for the ACK (RFC 3261 15) and the call slot
        would stay taken while pjsip retransmits the 2xx (64×T1, 32 s)."""
        call = self.calls.get(key)
        if call is None or call.disconnected:
            return
        if call.dialog is None or self.gate is None or not self.gate.terminate(*call.dialog, 408):
            self.hangup(key)

    def hangup(self, key: int, code: int = 200) -> None:
        call = self.calls.get(key)
        if call is None or call.disconnected or not owns(call):  # not its id: that would hang up another call
            return
        op = pj.CallOpParam(True)
        op.statusCode = code
        try:
            call.hangup(op)
        except pj.Error as e:
            event("sip_hangup_error", call=call.call_id, error=e.info())

    def transfer(self, key: int, uri: str, attended: bool = False) -> None:
        """REFER the caller to `uri` (blind), or first call `uri` and REFER with Replaces once it answers."""
        call = self.calls.get(key)
        if call is None or call.disconnected:
            return
        if attended:
            self.consults.start(call, uri)
            return
        if "?" in uri and not uri.startswith("<"):
            uri = f"<{uri}>"  # a URI with headers must be a name-addr in Refer-To (RFC 3261 20.10)
        try:
            call.xfer(uri, pj.CallOpParam(True))
        except pj.Error as e:
            event("sip_transfer_error", call=call.call_id, target=uri, error=e.info())

    def send_dtmf(self, key: int, digits: str, mode: DtmfMode = "rfc4733") -> None:
        """Send `digits` as RFC 4733 events in the call's RTP, or with `mode` info as one SIP INFO per key
        (`application/dtmf-relay`: `Signal=` and `Duration=`, as pjsua writes it)."""
        call = self.calls.get(key)
        if call is None or call.disconnected:
            return
        try:
            if mode == "info":
                prm = pj.CallSendDtmfParam()
                prm.method = pj.PJSUA_DTMF_METHOD_SIP_INFO
                prm.digits = digits
                call.sendDtmf(prm)
            else:
                call.dialDtmf(digits)
        except pj.Error as e:
            event("sip_dtmf_error", call=call.call_id, method=mode, error=e.info())
            return
        event("dtmf_sent", call=call.call_id, digits=digits, method=mode)

    def _destroy(self) -> None:
        if self.ep is None:
            return
        try:
            self.ep.hangupAllCalls()
            for _ in range(20):
                self.ep.libHandleEvents(10)
        except pj.Error:
            pass
        with contextlib.suppress(pj.Error):
            self.ep.audDevManager().setNoDev()  # stops the media clock: no more frame callbacks
        self.calls.clear()
        self._released.clear()
        self._ended.clear()
        self.trunks.shutdown()
        for account in (self.sips_account, self.account):
            if account is not None:
                with contextlib.suppress(pj.Error):
                    account.shutdown()
        self.account = self.sips_account = None
        gc.collect()
        with contextlib.suppress(pj.Error):
            self.ep.libDestroy()
        self.ep = None
        self.gate = None  # pjsip held its module until libDestroy
        self.ports.clear()  # and the conference bridge its media ports
        self._routes = None
        gc.collect()
