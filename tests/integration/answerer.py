"""A pjsua2 phone that answers every call, as the target of a transfer (no test peer here answers an INVITE with
Replaces: baresip 1.0 does not support it, a sipp scenario is bound to one Call-ID). pjsua itself takes an INVITE
with Replaces over: it answers it and hangs up the dialog it replaces (RFC 3891).

    python -m tests.integration.answerer PORT SECONDS [--code 486]

prints one JSON line per event: `{"ready": port}`, `{"incoming": Call-ID, "from": From}`, `{"replaced": Call-ID,
"by": Call-ID}`, `{"confirmed": Call-ID}`, `{"ended": Call-ID, "code": status}`.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any

import pjsua2 as pj


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class Answered(pj.Call):  # type: ignore[misc]
    def __init__(self, acc: Any, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(acc, call_id)
        self.acc = acc
        self.name = ""

    def onCallState(self, prm: Any) -> None:  # noqa: N802
        ci = self.getInfo()
        self.name = str(ci.callIdString)
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED:
            say(confirmed=self.name)
        elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            say(ended=self.name, code=int(ci.lastStatusCode))

    def onCallReplaced(self, prm: Any) -> None:  # noqa: N802
        new = Answered(self.acc, prm.newCallId)
        calls.append(new)
        prm.newCall = new
        say(replaced=self.name, by=str(new.getInfo().callIdString))


class Acc(pj.Account):  # type: ignore[misc]
    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802
        call = Answered(self, prm.callId)
        calls.append(call)
        ci = call.getInfo()
        call.name = str(ci.callIdString)
        say(incoming=call.name, **{"from": str(ci.remoteUri)})
        op = pj.CallOpParam(True)
        op.statusCode = answer_code
        call.answer(op)


calls: list[Answered] = []
answer_code = 200


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("seconds", type=float)
    p.add_argument("--code", type=int, default=200, help="answer every call with this status (486: busy)")
    args = p.parse_args()
    global answer_code
    answer_code = args.code
    ep = pj.Endpoint()
    ep.libCreate()
    ec = pj.EpConfig()
    ec.uaConfig.threadCnt = 0
    ec.uaConfig.mainThreadOnly = True
    ec.logConfig.level = ec.logConfig.consoleLevel = 1
    ec.medConfig.noVad = True
    ep.libInit(ec)
    tc = pj.TransportConfig()
    tc.port = args.port
    tc.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)
    ep.libStart()
    ep.audDevManager().setNullDev()
    ac = pj.AccountConfig()
    ac.idUri = f"sip:desk@127.0.0.1:{args.port}"
    acc = Acc()
    acc.create(ac)
    say(ready=args.port)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        ep.libHandleEvents(10)
    ep.hangupAllCalls()
    for _ in range(20):
        ep.libHandleEvents(10)
    calls.clear()
    del acc
    gc.collect()
    ep.libDestroy()


if __name__ == "__main__":
    main()
