"""A pjsua2 test caller: dials a SIP URI, speaks a WAV on cue, sends DTMF, records what it hears, frame by frame.

Both directions pass through one AudioMediaPort on the caller's clock, so the sent and received tracks share a
timeline to the frame: that is what barge-in reaction on the wire is measured from. One call per process (pjsua
allows one Endpoint per process). Run as `python -m telephony.simulator.caller --help`; prints a JSON result.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
import wave
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pjsua2 as pj

from media.frames import FRAME_BYTES, FRAME_MS, SAMPLE_RATE, SILENCE, level_dbfs, split_frames
from telephony.media_port import audio_format, read_buf, write_buf


@dataclass
class Result:
    status: int = 0
    reason: str = ""
    answered: bool = False
    answer_s: float | None = None
    remote_hangup: bool = False
    frames_rx: int = 0
    frames_tx: int = 0
    speak_start_frame: int | None = None
    """Index (on the shared frame clock) of the first frame of the caller's utterance."""
    agent_speech_start_frame: int | None = None
    codec: str = ""
    dtmf_sent: list[str] = field(default_factory=list)
    refer_to: list[str] = field(default_factory=list)
    duration_s: float = 0.0


class _Port(pj.AudioMediaPort):  # type: ignore[misc]
    def __init__(self, speech: list[bytes], cue: str, cue_value: float, echo_gain: float, echo_delay_frames: int):
        super().__init__()
        self.rx: list[bytes] = []
        self.tx: list[bytes] = []
        self.speech = speech
        self.cue = cue
        self.cue_value = cue_value
        self.echo_gain = echo_gain
        self.echo_delay = echo_delay_frames
        self.speak_at: int | None = None
        self.agent_start: int | None = None
        self.lock = threading.Lock()

    def onFrameReceived(self, frame: Any) -> None:  # noqa: N802
        try:
            data = read_buf(frame.buf, FRAME_BYTES) if frame.size == FRAME_BYTES else SILENCE
            with self.lock:
                self.rx.append(data)
                n = len(self.rx) - 1
                if self.agent_start is None and level_dbfs(data) > -45.0:
                    self.agent_start = n
                    if self.cue == "after_agent_ms" and self.speak_at is None:
                        self.speak_at = n + int(self.cue_value // FRAME_MS)
        except Exception as e:  # never into pjmedia
            print(f"caller rx error: {e!r}", file=sys.stderr)

    def onFrameRequested(self, frame: Any) -> None:  # noqa: N802
        try:
            with self.lock:
                n = len(self.tx)
                if self.cue == "at_s" and self.speak_at is None:
                    self.speak_at = int(self.cue_value * 1000 // FRAME_MS)
                out = SILENCE
                if self.speak_at is not None and 0 <= n - self.speak_at < len(self.speech):
                    out = self.speech[n - self.speak_at]
                if self.echo_gain > 0 and len(self.rx) > self.echo_delay:
                    echo = np.frombuffer(self.rx[-1 - self.echo_delay], dtype="<i2").astype(np.float32)
                    mix = np.frombuffer(out, dtype="<i2").astype(np.float32) + echo * self.echo_gain
                    out = np.clip(mix, -32768, 32767).astype("<i2").tobytes()
                self.tx.append(out)
            write_buf(frame.buf, out)
            frame.size = FRAME_BYTES
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        except Exception as e:
            print(f"caller tx error: {e!r}", file=sys.stderr)


class _Call(pj.Call):  # type: ignore[misc]
    def __init__(self, acc: Any, port: _Port) -> None:
        super().__init__(acc)
        self.port = port
        self.state = ""
        self.status = 0
        self.reason = ""
        self.confirmed_at: float | None = None
        self.done = threading.Event()
        self.codec = ""
        self.refer_to: list[str] = []

    def onCallState(self, prm: Any) -> None:  # noqa: N802
        try:
            ci = self.getInfo()
            self.status = int(ci.lastStatusCode)
            self.reason = str(ci.lastReason)
            if ci.state == pj.PJSIP_INV_STATE_CONFIRMED:
                self.confirmed_at = time.monotonic()
            if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self.done.set()
        except Exception as e:
            print(f"caller state error: {e!r}", file=sys.stderr)

    def onCallTransferRequest(self, prm: Any) -> None:  # noqa: N802
        self.refer_to.append(str(prm.dstUri))
        prm.statusCode = 603  # the test caller records transfers and declines them

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
            print(f"caller media error: {e!r}", file=sys.stderr)


def _load_wav16k(path: str) -> bytes:
    from media.resample import resample

    with wave.open(path) as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: must be 16-bit PCM")
        pcm = w.readframes(w.getnframes())
        if w.getnchannels() == 2:
            pcm = np.frombuffer(pcm, dtype="<i2")[::2].tobytes()
        return resample(pcm, w.getframerate())


def _write_wav(path: str, frames: list[bytes]) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(b"".join(frames))


def run(args: argparse.Namespace) -> Result:
    speech = split_frames(_load_wav16k(args.play)) if args.play else []
    if args.speak_at_s is not None:
        cue, cue_value = "at_s", args.speak_at_s
    else:
        cue, cue_value = "after_agent_ms", args.speak_after_agent_ms or 0.0
    echo_gain = 10 ** (args.echo_db / 20) if args.echo_db is not None else 0.0
    port = _Port(speech, cue if speech else "", cue_value, echo_gain, args.echo_delay_ms // FRAME_MS)
    ep = pj.Endpoint()
    ep.libCreate()
    ec = pj.EpConfig()
    ec.uaConfig.threadCnt = 0
    ec.uaConfig.mainThreadOnly = True
    ec.logConfig.level = 1
    ec.logConfig.consoleLevel = 1
    ec.medConfig.clockRate = SAMPLE_RATE
    ec.medConfig.sndClockRate = SAMPLE_RATE
    ec.medConfig.noVad = True
    ec.medConfig.ecTailLen = 0
    ep.libInit(ec)
    tc = pj.TransportConfig()
    tc.port = 0
    tc.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_TCP if args.tcp else pj.PJSIP_TRANSPORT_UDP, tc)
    ep.libStart()
    ep.audDevManager().setNullDev()
    for ci in ep.codecEnum2():
        cid = str(ci.codecId)
        if not cid.startswith("telephone-event"):
            ep.codecSetPriority(cid, 0)
    for i, c in enumerate(args.codec.split(",")):
        for ci in ep.codecEnum2():
            if str(ci.codecId).upper().startswith(c.upper() + "/"):
                ep.codecSetPriority(str(ci.codecId), 250 - i)
    ac = pj.AccountConfig()
    ac.idUri = "sip:caller@127.0.0.1"
    ac.mediaConfig.transportConfig.port = args.rtp_port
    ac.mediaConfig.transportConfig.portRange = 100
    acc = pj.Account()
    acc.create(ac)
    port.createPort("caller", audio_format())
    call = _Call(acc, port)
    res = Result()
    t0 = time.monotonic()
    call.makeCall(args.uri, pj.CallOpParam(True))
    dtmf = sorted((float(t), d) for d, t in (x.split("@") for x in args.dtmf)) if args.dtmf else []
    hung_up = False
    held = [False, False]
    while not call.done.is_set():
        ep.libHandleEvents(10)
        now = time.monotonic()
        if call.confirmed_at is not None:
            since = now - call.confirmed_at
            while dtmf and since >= dtmf[0][0]:
                _, digits = dtmf.pop(0)
                prm = pj.CallSendDtmfParam()
                prm.digits = digits
                prm.method = pj.PJSUA_DTMF_METHOD_SIP_INFO if args.dtmf_info else pj.PJSUA_DTMF_METHOD_RFC2833
                call.sendDtmf(prm)
                res.dtmf_sent.append(digits)
            if args.hold_at is not None and since >= args.hold_at and not held[0]:
                held[0] = True
                call.setHold(pj.CallOpParam(True))
            if args.unhold_at is not None and since >= args.unhold_at and held[0] and not held[1]:
                held[1] = True
                op = pj.CallOpParam(True)
                op.opt.flag = pj.PJSUA_CALL_UNHOLD
                call.reinvite(op)
            if since >= args.duration and not hung_up:
                hung_up = True
                call.hangup(pj.CallOpParam(True))
        if now - t0 > args.duration + args.answer_timeout + 5 and not hung_up:
            hung_up = True
            call.hangup(pj.CallOpParam(True))
    for _ in range(10):
        ep.libHandleEvents(10)
    res.status = call.status
    res.reason = call.reason
    res.answered = call.confirmed_at is not None
    res.answer_s = round(call.confirmed_at - t0, 3) if call.confirmed_at else None
    res.remote_hangup = not hung_up
    res.codec = call.codec
    res.refer_to = call.refer_to
    res.duration_s = round(time.monotonic() - t0, 3)
    with port.lock:
        res.frames_rx, res.frames_tx = len(port.rx), len(port.tx)
        res.speak_start_frame, res.agent_speech_start_frame = port.speak_at if speech else None, port.agent_start
        rx, tx = list(port.rx), list(port.tx)
    if args.record:
        _write_wav(args.record, rx)
    if args.record_sent:
        _write_wav(args.record_sent, tx)
    del call
    acc.shutdown()
    del acc, port
    gc.collect()
    ep.libDestroy()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("uri")
    p.add_argument("--play", help="WAV the caller speaks (any rate, 16-bit)")
    p.add_argument("--speak-at-s", type=float, help="start speaking this long after the call is set up")
    p.add_argument("--speak-after-agent-ms", type=float, help="start speaking this long after agent audio starts")
    p.add_argument("--record", help="WAV of what the caller hears (16 kHz)")
    p.add_argument("--record-sent", help="WAV of what the caller sends (16 kHz), on the same frame clock")
    p.add_argument("--duration", type=float, default=5.0, help="hang up this long after the answer")
    p.add_argument("--answer-timeout", type=float, default=15.0)
    p.add_argument("--dtmf", action="append", help="DIGITS@SECONDS after the answer; repeatable")
    p.add_argument("--dtmf-info", action="store_true", help="send DTMF as SIP INFO instead of RFC 4733")
    p.add_argument("--echo-db", type=float, help="return the agent's audio to it at this gain (dB, e.g. -12)")
    p.add_argument("--echo-delay-ms", type=int, default=100)
    p.add_argument("--hold-at", type=float, help="put the call on hold this long after the answer (re-INVITE)")
    p.add_argument("--unhold-at", type=float, help="take it off hold at this time")
    p.add_argument("--codec", default="PCMU", help="comma-separated codec preference, e.g. G722,PCMA")
    p.add_argument("--rtp-port", type=int, default=40000)
    p.add_argument("--tcp", action="store_true")
    args = p.parse_args(argv)
    res = run(args)
    print(json.dumps(asdict(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
