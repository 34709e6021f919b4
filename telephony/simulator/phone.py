"""The simulator's SIP phone: a pjsua2 endpoint that places calls and exchanges audio frame by frame.

Sent and received audio pass through one AudioMediaPort on the phone's media clock, so both tracks share a frame
index: what the caller said at frame k and what it heard at frame k are simultaneous on the wire. All pjsua2 calls
happen on the thread that created the Phone (it runs `poll()`); the port's callbacks run on the clock thread and
only touch the port's own state under its lock.

A pjsua2 `Call` object must not outlive its pjsua call id (telephony/call_ids.py): the phone keeps every released call
in a `Graveyard` swept after each poll, acts on a call only while it `owns` its id, and dials only while pjsua has a
free call slot (`can_dial`: a hung-up call holds its slot until the far end answered the BYE).
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import pjsua2 as pj

from media.frames import FRAME_BYTES, FRAME_SAMPLES, SAMPLE_RATE, SILENCE, level_dbfs
from telephony.call_ids import Graveyard, owns
from telephony.endpoint import EXPECTED_MAX_CALLS
from telephony.media_port import audio_format, read_buf, write_buf
from telephony.pjsua_c import call_count
from telephony.simulator.calllog import CallLog
from telephony.simulator.impair import ImpairError, Impairment, SdpProxy, hop
from telephony.simulator.relay_tls import TlsOptions, is_tls
from telephony.simulator.script import Dial
from telephony.simulator.shaper import LineImpairment
from telephony.sip_trace import is_message

MAX_ACCOUNTS = 6
"""Distinct From/credential combinations one phone process keeps (pjsua allows 8 accounts)."""

TRACE_LEVEL = 5
"""pjsua's log level with a trace: SIP messages (4) and the transactions' state changes (5)."""
AUDIBLE_DBFS = -50.0
"""Received frames must be at least this loud, and within 35 dB of the loudest so far, to count as agent audio."""


class PhonePort(pj.AudioMediaPort):  # type: ignore[misc]
    """One call's audio; reused by later calls (a port freed while the clock runs can crash the process)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.rx: list[bytes] = []
        self.tx: list[bytes] = []
        self.queue: deque[bytes] = deque()
        self.speech_start: int | None = None
        """Frame index at which the current (or last) utterance started."""
        self.speech_end: int | None = None
        self.utterances: list[tuple[int, int]] = []
        """First and last sent frame of each utterance (a `speak` while one is sent starts the next one there)."""
        self.heard_audio = bytearray()
        """1 for each received frame that carried agent audio (as `last_audio` counts it), else 0."""
        self.echo_gain = 0.0
        self.echo_delay = 0
        self.noise: np.ndarray | None = None
        """Added to every sent frame, in a loop, from `noise_at` on."""
        self.noise_at = 0
        self._peak = -100.0
        self.last_audio = -1
        """Index of the last received frame that carried agent audio (-1: none yet)."""
        self.audio_run = 0
        """Consecutive received frames with agent audio, up to the latest."""
        self.first_audio = -1
        self.first_audio_wall = 0.0
        """Wall time (time.time()) the first agent-audio frame arrived, for comparing with other processes' clocks."""
        self.speech_start_wall = 0.0
        """Wall time the first frame of the current utterance was handed to the stream."""

    # -- phone thread -------------------------------------------------------------------------------------
    def speak(self, frames: list[bytes]) -> None:
        with self.lock:
            if self.queue and self.speech_start is not None:
                self.utterances.append((self.speech_start, len(self.tx) - 1))
            self.queue.extend(frames)
            self.speech_start = None
            self.speech_end = None

    def set_echo(self, gain: float, delay_frames: int) -> None:
        with self.lock:
            self.echo_gain, self.echo_delay = gain, delay_frames

    def set_noise(self, samples: np.ndarray | None) -> None:
        with self.lock:
            self.noise, self.noise_at = samples, 0

    @property
    def speaking(self) -> bool:
        with self.lock:
            return bool(self.queue)

    # -- clock thread -------------------------------------------------------------------------------------
    def onFrameReceived(self, frame: Any) -> None:  # noqa: N802
        try:
            data = read_buf(frame.buf, FRAME_BYTES) if frame.size == FRAME_BYTES else SILENCE
            level = level_dbfs(data)
            with self.lock:
                self.rx.append(data)
                self._peak = max(self._peak, level)
                audio = level > AUDIBLE_DBFS and level > self._peak - 35.0
                self.heard_audio.append(audio)
                if audio:
                    self.last_audio = len(self.rx) - 1
                    self.audio_run += 1
                    if self.first_audio < 0:
                        self.first_audio = self.last_audio
                        self.first_audio_wall = time.time()
                else:
                    self.audio_run = 0
        except Exception as e:  # never into pjmedia
            print(f"phone rx error: {e!r}", file=sys.stderr)

    def onFrameRequested(self, frame: Any) -> None:  # noqa: N802
        try:
            with self.lock:
                n = len(self.tx)
                out = SILENCE
                if self.queue:
                    if self.speech_start is None:
                        self.speech_start = n
                        self.speech_start_wall = time.time()
                    out = self.queue.popleft()
                    if not self.queue:
                        self.speech_end = n
                        self.utterances.append((self.speech_start, n))
                if self.echo_gain > 0 and len(self.rx) > self.echo_delay:
                    echo = np.frombuffer(self.rx[-1 - self.echo_delay], dtype="<i2").astype(np.float32)
                    mix = np.frombuffer(out, dtype="<i2").astype(np.float32) + echo * self.echo_gain
                    out = np.clip(mix, -32768, 32767).astype("<i2").tobytes()
                if self.noise is not None:
                    k = self.noise_at % (self.noise.size // FRAME_SAMPLES)
                    self.noise_at += 1
                    mix = (np.frombuffer(out, dtype="<i2").astype(np.float32)
                           + self.noise[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES])
                    out = np.clip(mix, -32768, 32767).astype("<i2").tobytes()
                self.tx.append(out)
            write_buf(frame.buf, out)
            frame.size = FRAME_BYTES
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        except Exception as e:
            print(f"phone tx error: {e!r}", file=sys.stderr)


@dataclass(frozen=True)
class RtpStats:
    """The call's audio stream as pjmedia counted it (RTCP for what the far end saw)."""

    rx_packets: int
    rx_lost: int
    rx_loss_pct: float
    """Of the packets the far end sent us (sequence gaps), in percent."""
    rx_jitter_ms: float
    """Mean interarrival jitter (RFC 3550) of what we received."""
    rx_jitter_max_ms: float
    tx_packets: int
    tx_loss_pct: float | None
    """Lost of the packets we sent, as the far end's last RTCP receiver report counted them (None: no report
    came), in percent of all we sent."""
    rtt_ms: float | None
    """Mean round-trip time from RTCP (None: no report with a delay since last SR came)."""
    jbuf_delay_ms: float
    """Mean delay of our jitter buffer."""


def stream_stats(call: Any) -> RtpStats | None:
    """The audio stream's statistics now, or None when the call has no stream."""
    try:
        st = call.getStreamStat(0)
    except pj.Error:
        return None
    rx, tx = st.rtcp.rxStat, st.rtcp.txStat
    rtt = st.rtcp.rttUsec
    expected = rx.pkt + rx.loss
    return RtpStats(
        rx_packets=int(rx.pkt), rx_lost=int(rx.loss),
        rx_loss_pct=round(100 * rx.loss / expected, 2) if expected else 0.0,
        rx_jitter_ms=round(rx.jitterUsec.mean / 1000, 2), rx_jitter_max_ms=round(rx.jitterUsec.max / 1000, 2),
        tx_packets=int(tx.pkt),
        tx_loss_pct=round(100 * tx.loss / tx.pkt, 2) if tx.updateCount and tx.pkt else None,
        rtt_ms=round(rtt.mean / 1000, 2) if rtt.n else None,
        jbuf_delay_ms=float(st.jbuf.avgDelayMsec),
    )


class _LogWriter(pj.LogWriter):  # type: ignore[misc]
    """pjsua's log entries into a CallLog (called on the pjsua thread and the media clock's)."""

    def __init__(self, log: CallLog) -> None:
        super().__init__()
        self.log = log

    def write(self, entry: Any) -> None:
        try:
            msg = str(entry.msg)
            self.log.add(time.time(), msg if is_message(msg) else f"[{entry.threadName}] {msg}")
        except Exception as e:  # never into pjsip
            print(f"phone log error: {e!r}", file=sys.stderr)


class PhoneCall(pj.Call):  # type: ignore[misc]
    def __init__(self, acc: Any, port: PhonePort, log: CallLog | None = None) -> None:
        super().__init__(acc)
        self.acc = acc
        self.port = port
        self.log = log
        """With a trace: where `onCallState` notes each state it was told of."""
        self.wall_started = time.time()
        self.status = 0
        self.reason = ""
        self.started = time.monotonic()
        self.confirmed_at: float | None = None
        self.ended_at: float | None = None
        self.codec = ""
        self.refer_to: list[str] = []
        self.accept_transfer = False
        """Carry out a REFER (pjsua calls its target, with Replaces when the Refer-To names one) instead of
        declining it."""
        self.transfer_call: PhoneCall | None = None
        """The call a carried-out REFER made (pjsua2 needs a Call object of its own for it)."""
        self.call_id = ""
        self.impairment: Impairment | None = None
        """With an impairment relay: what it did, once the call is finished."""
        self.rtp: RtpStats | None = None
        """The stream's statistics when it was last read (see `read_rtp`); kept after the stream is gone."""

    def read_rtp(self) -> None:
        """Keep the stream's statistics as they are now (a no-op once the stream is gone)."""
        stats = stream_stats(self)
        if stats is not None:
            self.rtp = stats

    def onStreamDestroyed(self, prm: Any) -> None:  # noqa: N802
        try:
            self.read_rtp()
        except Exception as e:
            print(f"phone stats error: {e!r}", file=sys.stderr)

    def onCallState(self, prm: Any) -> None:  # noqa: N802
        try:
            ci = self.getInfo()
            self.call_id = str(ci.callIdString)
            self.status = int(ci.lastStatusCode)
            self.reason = str(ci.lastReason)
            if self.log is not None:
                self.log.add(time.time(), f"[phone] onCallState {self.call_id} pjsua call {ci.id}: {ci.stateText} "
                                          f"({self.status} {self.reason})")
            if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and self.confirmed_at is None:
                self.confirmed_at = time.monotonic()
            if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self.ended_at = time.monotonic()
        except Exception as e:
            print(f"phone state error: {e!r}", file=sys.stderr)

    def onCallTransferRequest(self, prm: Any) -> None:  # noqa: N802
        self.refer_to.append(str(prm.dstUri))
        if not self.accept_transfer:
            prm.statusCode = 603  # the simulated caller records transfers and declines them
        elif self.transfer_call is None:
            # the target's audio reaches the same recorder
            self.transfer_call = PhoneCall(self.acc, self.port, self.log)
            prm.newCall = self.transfer_call

    def onCallMediaState(self, prm: Any) -> None:  # noqa: N802
        try:
            ci = self.getInfo()
            for i, mi in enumerate(ci.media):
                if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    aud = self.getAudioMedia(i)
                    aud.startTransmit(self.port)
                    self.port.startTransmit(aud)
            si = self.getStreamInfo(0)
            self.codec = f"{si.codecName}/{si.codecClockRate}"
        except Exception as e:
            print(f"phone media error: {e!r}", file=sys.stderr)

    @property
    def ended(self) -> bool:
        return self.ended_at is not None


class Phone:
    """One pjsua2 endpoint (pjsua allows one per process) for up to `EXPECTED_MAX_CALLS` calls at once (the wheel's
    compiled limit, DESIGN §2), each with its own port and so its own tracks. Codecs are the endpoint's: `set_codecs`
    right before `dial` shapes that call's offer."""

    def __init__(self, rtp_port: int = 40000, tcp: bool = False, loss_pct: float = 0.0,
                 tls_ca: str | None = None, tls_cert: tuple[str, str] | None = None, impair: bool = False,
                 tls: TlsOptions | None = None, bind: str = "127.0.0.1", trace: bool = False) -> None:
        """`loss_pct`: RTP packets dropped in each direction, at random (pjmedia's own impairment); `tls_ca`: call
        over TLS, trusting only the CA certificates in this PEM file; `tls_cert`: (certificate, key) PEM files
        to present as a TLS client; `impair`: calls go through an `SdpProxy`, so `dial(impair=...)` can put a
        seeded impairment relay into their media path; `tls`: how to reach `sips:` and `;transport=tls` targets
        (through the proxy's TLS with `impair`); `trace`: keep pjsua's log and every call's SIP messages in `log`
        (a CallLog) for `trace_of`."""
        self.proxy = SdpProxy(tls=tls) if impair else None
        self.log = CallLog() if trace else None
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        ec = pj.EpConfig()
        ec.uaConfig.threadCnt = 0
        ec.uaConfig.mainThreadOnly = True
        ec.uaConfig.maxCalls = EXPECTED_MAX_CALLS
        ec.logConfig.level = 1
        ec.logConfig.consoleLevel = 1
        if self.log is not None:
            self._logwriter = _LogWriter(self.log)
            ec.logConfig.writer = self._logwriter
            ec.logConfig.level = ec.logConfig.consoleLevel = TRACE_LEVEL  # the writer gets up to consoleLevel
            ec.logConfig.msgLogging = True
            ec.logConfig.decor = 0
        ec.medConfig.clockRate = SAMPLE_RATE
        ec.medConfig.sndClockRate = SAMPLE_RATE
        ec.medConfig.noVad = True
        ec.medConfig.ecTailLen = 0
        ec.medConfig.txDropPct = int(round(loss_pct))
        ec.medConfig.rxDropPct = int(round(loss_pct))
        self.ep.libInit(ec)
        tc = pj.TransportConfig()
        tc.port = 0
        tc.boundAddress = bind  # "": every address (a caller in a namespace behind NAT, tests/integration/netns.py)
        if tls_ca:
            tc.tlsConfig.CaListFile = tls_ca
            tc.tlsConfig.verifyServer = True
            if tls_cert:
                tc.tlsConfig.certFile, tc.tlsConfig.privKeyFile = tls_cert
            self.ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tc)
        else:
            self.ep.transportCreate(pj.PJSIP_TRANSPORT_TCP if tcp else pj.PJSIP_TRANSPORT_UDP, tc)
            if not tcp:  # for a `;transport=tcp` target, and the in-dialog requests to a far end's TCP Contact
                self.ep.transportCreate(pj.PJSIP_TRANSPORT_TCP, tc)
            if tls is not None:
                self.ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, self._tls_transport(tls))
        self.ep.libStart()
        self.ep.audDevManager().setNullDev()
        ac = pj.AccountConfig()
        ac.idUri = "sip:caller@127.0.0.1"
        ac.mediaConfig.transportConfig.port = rtp_port
        ac.mediaConfig.transportConfig.portRange = 100
        if self.proxy is not None:
            ac.sipConfig.proxies.append(self.proxy.uri)
        self.acc = pj.Account()
        self.acc.create(ac)
        self._rtp_port = rtp_port
        self._accounts: dict[tuple[str, str, str, str, str], pj.Account] = {}
        self._ports: list[PhonePort] = []
        self._free: list[PhonePort] = []
        self._released = Graveyard()

    def _tls_transport(self, tls: TlsOptions) -> Any:
        """pjsua's TLS: it trusts the proxy's certificate (when there is a proxy) and the options' CA."""
        tc = pj.TransportConfig()
        tc.port = 0
        tc.boundAddress = "127.0.0.1"
        cert = self.proxy.cert if self.proxy is not None else None
        ca = str(cert.trust_bundle(tls.ca_file)) if cert is not None else tls.ca_file
        if ca:
            tc.tlsConfig.CaListFile = ca
        tc.tlsConfig.verifyServer = not tls.insecure
        if tls.cert_file and tls.key_file:
            tc.tlsConfig.certFile, tc.tlsConfig.privKeyFile = tls.cert_file, tls.key_file
        return tc

    def set_codecs(self, codecs: list[str]) -> None:
        """Offer exactly these codecs, in this order (plus telephone-event)."""
        wanted = [c.upper() for c in codecs]
        for ci in self.ep.codecEnum2():
            cid = str(ci.codecId)
            if cid.startswith("telephone-event"):
                continue
            name = cid.split("/")[0].upper()
            self.ep.codecSetPriority(cid, 250 - wanted.index(name) if name in wanted else 0)

    def _account(self, dial: Dial, secure: str = "") -> Any:
        """The account whose From and credentials `dial` asks for, and for a TLS target (`secure`: 'tls', or
        'sips' for a sips: URI, which needs a sips: Contact) one that reaches the proxy over TLS (the default one
        when it asks for none of these)."""
        if dial.from_ is None and dial.auth is None and not secure:
            return self.acc
        a = dial.auth
        key = (dial.from_.uri("127.0.0.1") if dial.from_ else "", a.username if a else "",
               a.password if a else "", a.realm if a else "", secure)
        if key not in self._accounts:
            if len(self._accounts) >= MAX_ACCOUNTS:
                raise ValueError(f"more than {MAX_ACCOUNTS} different from/auth combinations in one phone")
            ac = pj.AccountConfig()
            ac.idUri = key[0] or ("sips:caller@127.0.0.1" if secure == "sips" else "sip:caller@127.0.0.1")
            ac.mediaConfig.transportConfig.port = self._rtp_port
            ac.mediaConfig.transportConfig.portRange = 100
            if self.proxy is not None:
                ac.sipConfig.proxies.append(self.proxy.tls_uri if secure else self.proxy.uri)
            if a is not None:
                ac.sipConfig.authCreds.append(pj.AuthCredInfo("digest", a.realm, a.username, 0, a.password))
            acc = pj.Account()
            acc.create(ac)
            self._accounts[key] = acc
        return self._accounts[key]

    def dial(self, uri: str, dial: Dial | None = None,
             impair: tuple[LineImpairment, str] | None = None) -> PhoneCall:
        """Call `uri`; `dial` adds headers, a From and a To, and credentials for a digest challenge; `impair`
        (line, seed) drops, delays and reorders RTP each way through a seeded relay (needs a Phone made with
        `impair`; raises ImpairError for a target it cannot relay for)."""
        dial = dial or Dial()
        tls = is_tls(uri)
        if impair is not None:
            if self.proxy is None:
                raise ValueError("dial(impair=...) needs a Phone made with impair=True")
            hop(uri)
            if tls and self.proxy.tls is None:
                raise ImpairError(f"{uri} is a TLS target: the impairment relay needs --tls-ca FILE (or --insecure)")
            self.proxy.arm(*impair)
        acc = self._account(dial, ("sips" if uri.strip().lower().startswith("sips:") else "tls") if tls else "")
        if self._free:
            port = self._free.pop()
            with port.lock:
                port.reset()
        else:
            port = PhonePort()
            port.createPort(f"phone-{len(self._ports)}", audio_format())
            self._ports.append(port)
        call = PhoneCall(acc, port, self.log)
        prm = pj.CallOpParam(True)
        for name, value in dial.headers.items():
            h = pj.SipHeader()
            h.hName, h.hValue = name, value
            prm.txOption.headers.append(h)
        to = uri
        if dial.to is not None:
            prm.txOption.targetUri = uri
            to = dial.to.uri(uri_host(uri))
        try:
            call.makeCall(to, prm)
        except pj.Error:
            if impair is not None and self.proxy is not None:
                self.proxy.disarm()  # no INVITE went out: the next call must not take this call's impairment
            self._free.append(port)
            raise
        return call

    def poll(self, ms: int = 10) -> None:
        self.ep.libHandleEvents(ms)
        self._released.sweep()

    def can_dial(self) -> bool:
        """pjsua has a free call slot (a hung-up call holds its slot until the far end answered the BYE)."""
        return call_count() < EXPECTED_MAX_CALLS

    @property
    def releasing(self) -> int:
        """Released calls whose object the phone still keeps (a later call has their pjsua call id)."""
        return len(self._released)

    def send_dtmf(self, call: PhoneCall, digits: str, info: bool = False) -> None:
        prm = pj.CallSendDtmfParam()
        prm.digits = digits
        prm.method = pj.PJSUA_DTMF_METHOD_SIP_INFO if info else pj.PJSUA_DTMF_METHOD_RFC2833
        call.sendDtmf(prm)

    def hangup(self, call: PhoneCall) -> None:
        if not call.ended and owns(call):
            call.read_rtp()
            with contextlib.suppress(pj.Error):
                call.hangup(pj.CallOpParam(True))

    def hold(self, call: PhoneCall, on: bool) -> None:
        if on:
            call.setHold(pj.CallOpParam(True))
        else:
            op = pj.CallOpParam(True)
            op.opt.flag = pj.PJSUA_CALL_UNHOLD
            call.reinvite(op)

    def finish(self, call: PhoneCall, timeout_s: float = 5.0) -> None:
        """Hang up if needed and let pjsua finish the call."""
        self.hangup(call)
        deadline = time.monotonic() + timeout_s
        while not call.ended and time.monotonic() < deadline:
            self.poll(10)
        for _ in range(5):
            self.poll(10)
        self.release(call)

    def release(self, call: PhoneCall) -> None:
        """After the call ended: stop its impairment relay (keeping what it did) and free its port for a later call.
        The phone keeps the call object until it can go (telephony/call_ids.py): drop every other reference to it."""
        if self.proxy is not None:
            call.impairment = self.proxy.release(call.call_id)
        if call.port not in self._free:
            self._free.append(call.port)
        for c in (call, call.transfer_call):
            if c is not None:
                self._released.bury(c)

    def trace_of(self, call: PhoneCall) -> str:
        """With `trace`: the call's SIP messages and what pjsua logged from its dial to now; the log then forgets its
        messages. '' without."""
        if self.log is None:
            return ""
        text = self.log.dump(call.call_id, call.wall_started - 1.0, time.time())
        self.log.forget(call.call_id)
        return text

    def close(self) -> None:
        with contextlib.suppress(pj.Error):
            self.ep.hangupAllCalls()
            self.ep.audDevManager().setNoDev()  # stop the media clock before the ports go
        self._free.clear()
        self._ports.clear()
        self._released.clear()
        for acc in self._accounts.values():
            acc.shutdown()
        self._accounts.clear()
        self.acc.shutdown()
        del self.acc
        gc.collect()
        self.ep.libDestroy()
        if self.proxy is not None:
            self.proxy.close()


def uri_host(uri: str) -> str:
    """The host[:port] of a SIP URI: `sip:100@10.0.0.1:5062;transport=tcp` -> `10.0.0.1:5062`."""
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    return rest.rsplit("@", 1)[-1].split(";", 1)[0].split("?", 1)[0].rstrip(">")
