"""Baseline for the CPU benchmark: a bare pjsua2 answerer that echoes each call through its conference bridge.

`python -m bench.bridge_echo PORT RTP_PORT` answers every call and connects the call's audio to itself, with the
same endpoint settings as voicegate (16 kHz bridge, null sound device, no VAD) and the same pjsua poll interval
(`POLL_MS`; polled every 10 ms, the gateway's pjsua thread took 9.0 ms of CPU a second instead of 5.9). Runs
until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import pjsua2 as pj

from telephony.endpoint import POLL_MS


class _Call(pj.Call):  # type: ignore[misc]
    def onCallMediaState(self, prm: Any) -> None:  # noqa: N802
        ci = self.getInfo()
        for i, mi in enumerate(ci.media):
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                aud = self.getAudioMedia(i)
                aud.startTransmit(aud)


class _Account(pj.Account):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[_Call] = []

    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802
        call = _Call(self, prm.callId)
        self.calls.append(call)
        op = pj.CallOpParam(True)
        op.statusCode = 200
        call.answer(op)


def main() -> int:
    port, rtp = int(sys.argv[1]), int(sys.argv[2])
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    ep = pj.Endpoint()
    ep.libCreate()
    ec = pj.EpConfig()
    ec.uaConfig.threadCnt = 0
    ec.uaConfig.mainThreadOnly = True
    ec.uaConfig.maxCalls = 4
    ec.logConfig.level = 1
    ec.logConfig.consoleLevel = 0
    ec.medConfig.clockRate = 16000
    ec.medConfig.sndClockRate = 16000
    ec.medConfig.noVad = True
    ec.medConfig.ecTailLen = 0
    ep.libInit(ec)
    tc = pj.TransportConfig()
    tc.port = port
    tc.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)
    ep.libStart()
    ep.audDevManager().setNullDev()
    ac = pj.AccountConfig()
    ac.idUri = f"sip:echo@127.0.0.1:{port}"
    ac.mediaConfig.transportConfig.port = rtp
    ac.mediaConfig.transportConfig.portRange = 40
    acc = _Account()
    acc.create(ac, True)
    print("ready", flush=True)
    while not stop:
        ep.libHandleEvents(POLL_MS)
    ep.hangupAllCalls()
    for _ in range(20):
        ep.libHandleEvents(10)
    acc.calls.clear()
    acc.shutdown()
    del acc
    ep.libDestroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
