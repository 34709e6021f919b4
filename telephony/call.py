"""One SIP call leg (a pjsua2 Call) and the listener interface the application implements.

Everything here runs on the pjsua thread. Callbacks catch every exception (one crossing into pjsua aborts the
process) and hand work to the listener, which must return at once.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Protocol

import pjsua2 as pj

from media.pipeline import CallMedia
from telephony.admission import dialog_ids
from telephony.logs import event
from telephony.media_port import CallMediaPort, PortPool
from telephony.rtp_stats import summarize, with_quality
from telephony.sdp import prefer_codec


class CallListener(Protocol):
    def on_media_ready(self, call: SipCall) -> None: ...

    def on_confirmed(self, call: SipCall) -> None: ...

    def on_dtmf(self, call: SipCall, digit: str, method: str) -> None: ...

    def on_disconnected(self, call: SipCall, code: int, reason: str) -> None: ...

    def on_transfer_status(self, call: SipCall, code: int, reason: str) -> None: ...

    def on_hold(self, call: SipCall, held: bool) -> None: ...


_KEYS = itertools.count(1)
_HOLD = (pj.PJSUA_CALL_MEDIA_LOCAL_HOLD, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD, pj.PJSUA_CALL_MEDIA_NONE)


class SipCall(pj.Call):  # type: ignore[misc]
    def __init__(self, account: Any, call_id: int, on_released: Any, ports: PortPool) -> None:
        super().__init__(account, call_id)
        self._ports = ports
        self.key = next(_KEYS)
        self.call_id = ""
        self.source = ""
        """Address the INVITE came from."""
        self.trunk = ""
        """The trunk the call came in on ("" for none)."""
        self.sip_headers: dict[str, str] = {}
        """The INVITE's identity, diversion, X- and User-to-User headers (telephony/sip_headers.py)."""
        self.codec_preference: list[str] = []
        self.listener: CallListener | None = None
        self.media: CallMedia | None = None
        self.port: CallMediaPort | None = None
        self._conf: int | None = None
        """The call's conference slot that the port is connected to."""
        self.on_hold = False
        self.codec = ""
        self.srtp = False
        """The media is SRTP (our SDP answer carries SDES keys)."""
        self.connected_at: float | None = None
        self.answered_at: float | None = None
        """When our 2xx went out (the caller's ACK confirms the call)."""
        self.dialog: tuple[str, str, str] | None = None
        """Call-ID, local tag, remote tag, from our 2xx: what pjsip finds the dialog by (telephony/admission.py)."""
        self.nat_route: str | None = None
        """A Route to where the INVITE came from, for a caller behind NAT (telephony/nat.py)."""
        self.disconnected = False
        self._on_released = on_released
        self._rx_pkts = 0
        self._rx_changed = time.monotonic()
        self.rtp: dict[str, Any] = {}
        """RTP/RTCP figures of the audio stream, taken as it ends (telephony.rtp_stats)."""
        self.rtp_local = ""
        """The audio stream's local RTP address (`host:port`), once the media is up."""

    # -- pjsua callbacks ----------------------------------------------------------------------------------
    def onCallState(self, prm: Any) -> None:  # noqa: N802
        try:
            ci = self.getInfo()
            if ci.state == pj.PJSIP_INV_STATE_CONNECTING and self.answered_at is None:
                self.answered_at = time.monotonic()
                if prm.e.type == pj.PJSIP_EVENT_TSX_STATE:
                    self.dialog = dialog_ids(str(prm.e.body.tsxState.src.tdata.wholeMsg))
            if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and self.connected_at is None:
                self.connected_at = time.monotonic()
                if self.listener:
                    self.listener.on_confirmed(self)
            elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED and not self.disconnected:
                self.disconnected = True
                self._disconnect_media()
                if self.listener:
                    self.listener.on_disconnected(self, int(ci.lastStatusCode), str(ci.lastReason))
                self._on_released(self)
        except Exception as e:
            event("sip_callback_error", call=self.call_id, where="onCallState", error=repr(e))

    def onCallSdpCreated(self, prm: Any) -> None:  # noqa: N802
        try:
            remote = str(prm.remSdp.wholeSdp)
            if remote and self.codec_preference:
                prm.sdp.wholeSdp = prefer_codec(str(prm.sdp.wholeSdp), remote, self.codec_preference)
            self.srtp = "a=crypto:" in str(prm.sdp.wholeSdp)
        except Exception as e:
            event("sip_callback_error", call=self.call_id, where="onCallSdpCreated", error=repr(e))

    def onCallMediaState(self, prm: Any) -> None:  # noqa: N802
        try:
            ci = self.getInfo()
            si = self.getStreamInfo(0) if self.hasMedia() else None
            if si is not None:  # before `_connect`, whose on_media_ready starts the agent: it may choose by codec
                self.codec = f"{si.codecName}/{si.codecClockRate}"
            for i, mi in enumerate(ci.media):
                if mi.type != pj.PJMEDIA_TYPE_AUDIO:
                    continue
                held = mi.status in _HOLD
                if held != self.on_hold and self.listener:
                    self.listener.on_hold(self, held)
                self.on_hold = held
                if mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    self._connect(i)
                # held: pjsua made the stream anew and its slot stays unconnected, so the agent neither plays (its
                # queued audio waits) nor hears the hold music (tests/integration/test_call_control.py)
            event("call_media", call=self.call_id, codec=self.codec, hold=self.on_hold, srtp=self.srtp)
        except Exception as e:
            event("sip_callback_error", call=self.call_id, where="onCallMediaState", error=repr(e))

    def onDtmfDigit(self, prm: Any) -> None:  # noqa: N802
        try:
            method = "info" if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc4733"
            if self.listener:
                self.listener.on_dtmf(self, str(prm.digit), method)
        except Exception as e:
            event("sip_callback_error", call=self.call_id, where="onDtmfDigit", error=repr(e))

    def onCallTransferStatus(self, prm: Any) -> None:  # noqa: N802
        try:
            if prm.finalNotify and self.listener:
                self.listener.on_transfer_status(self, int(prm.statusCode), str(prm.reason))
        except Exception as e:
            event("sip_callback_error", call=self.call_id, where="onCallTransferStatus", error=repr(e))

    def onCallTransferRequest(self, prm: Any) -> None:  # noqa: N802
        """A REFER from the far end: refused (403). pjsua's default (202, then an INVITE to the Refer-To) would let
        a caller make the gateway dial any number through its trunks; an agent transfers callers, not the reverse."""
        try:
            prm.statusCode = 403
            event("refer_refused", call=self.call_id, target=str(prm.dstUri), source=self.source, code=403)
        except Exception as e:
            event("sip_callback_error", call=self.call_id, where="onCallTransferRequest", error=repr(e))

    def onCallReplaceRequest(self, prm: Any) -> None:  # noqa: N802
        """An INVITE with Replaces for this call (RFC 3891; the far end's attended transfer to voicegate): refused
        (403). pjsua's default answered it 200 itself, with no agent on the new call, and hung this one up (seen
        with a raw UDP peer); handing a running agent over to the new call is not there yet."""
        try:
            prm.statusCode = 403
            prm.reason = "Replacing a voicegate call is not supported"
            event("replaces_refused", call=self.call_id, code=403)
        except Exception as e:
            event("sip_callback_error", call=self.call_id, where="onCallReplaceRequest", error=repr(e))

    def onStreamDestroyed(self, prm: Any) -> None:  # noqa: N802 (before DISCONNECTED: the stream still counts)
        try:
            self.rtp = with_quality(summarize(self.getStreamStat(int(prm.streamIdx))), self.codec)
            event("call_rtp", call=self.call_id, **self.rtp)
        except Exception as e:
            event("sip_callback_error", call=self.call_id, where="onStreamDestroyed", error=repr(e))

    # -- media --------------------------------------------------------------------------------------------
    def _connect(self, index: int) -> None:
        if self.media is None:
            return
        aud = self.getAudioMedia(index)
        if self.port is None:
            self.port = self._ports.acquire(self.media, self.call_id)
            try:
                self.rtp_local = str(self.getMedTransportInfo(index).localRtpName)
            except pj.Error as e:  # no address: no pcap of this call's RTP; the call goes on
                event("sip_callback_error", call=self.call_id, where="getMedTransportInfo", error=str(e.info()))
            if self.listener:
                self.listener.on_media_ready(self)
        # a re-INVITE can give the stream a new conference slot: (re)connect both directions
        self._conf = int(aud.getPortId())
        self.port.connect(self._conf)

    def _disconnect_media(self) -> None:
        port, self.port = self.port, None
        slot, self._conf = self._conf, None
        if port is None:
            return
        if slot is not None:
            port.disconnect(slot)
        self._ports.release(port)

    def rtp_idle_s(self, now: float) -> float:
        """Seconds since the last received RTP packet changed the stream's counter (0 while on hold)."""
        if self.on_hold or self.disconnected or not self.hasMedia():
            self._rx_changed = now
            return 0.0
        try:
            pkts = int(self.getStreamStat(0).rtcp.rxStat.pkt)
        except pj.Error:
            return 0.0
        if pkts != self._rx_pkts:
            self._rx_pkts = pkts
            self._rx_changed = now
        return now - self._rx_changed
