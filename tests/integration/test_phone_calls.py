"""The simulator's phone holding several calls against a real answerer (sipp's built-in UAS): pjsua reuses a
freed call id at once, and a pjsua2 `Call` object destroyed after that reuse hung up the new call and cut it off
from its callbacks (the soak's call that "stayed at 180 Ringing" while the gateway answered it;
telephony/call_ids.py)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from telephony.call_ids import owns
from telephony.endpoint import EXPECTED_MAX_CALLS
from telephony.simulator.phone import Phone, PhoneCall
from tests.integration.peers import free_port, rtp_range


@pytest.fixture
def sipp_uas(tmp_path: Path) -> Iterator[str]:
    """sipp answering every INVITE (180, 200) and holding the call until its BYE; its SIP URI."""
    port = free_port()
    proc = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(port), "-mp", str(rtp_range(20)[0]),
                             "-nostdin", "-m", "20", "-timeout", "60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        time.sleep(0.3)  # sipp binds its socket at start; there is no event to wait for
        yield f"sip:echo@127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


def poll_until(phone: Phone, done: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        phone.poll(10)
    return done()


def reuse_an_id(uri: str) -> dict[str, object]:
    """Fill the phone's four call slots, hang up the call with pjsua id 0, dial again once pjsua freed the slot
    (the new call gets id 0), then release the old call object; what was seen, as plain values: asserting on a
    Call object here would keep it past `Phone.close`, and a Call destroyed after libDestroy aborts the process."""
    phone = Phone(rtp_range(200)[0])
    calls: dict[str, PhoneCall] = {}
    seen: dict[str, object] = {}
    try:
        for i in range(EXPECTED_MAX_CALLS):
            calls[str(i)] = phone.dial(uri)
        seen["all answered"] = poll_until(phone, lambda: all(c.confirmed_at is not None for c in calls.values()))
        seen["can dial when full"] = phone.can_dial()
        calls["old"] = next(calls.pop(k) for k, c in list(calls.items()) if c.getId() == 0)
        phone.hangup(calls["old"])  # DISCONNECTED at once; pjsua holds the id until sipp answered the BYE
        seen["old ended"] = calls["old"].ended
        seen["can dial before the BYE's answer"] = phone.can_dial()
        seen["can dial after it"] = poll_until(phone, phone.can_dial)
        calls["new"] = phone.dial(uri)
        seen["new id"] = calls["new"].getId()
        phone.release(calls.pop("old"))  # the phone keeps the object while the id is the new call's
        poll_until(phone, lambda: calls["new"].confirmed_at is not None or calls["new"].ended)
        new = calls["new"]
        seen["new"] = (new.confirmed_at is not None, new.ended, new.status, owns(new))
        phone.hangup(new)
        del new
        seen["old object went"] = poll_until(phone, lambda: not phone.releasing)
    finally:
        calls.clear()
        phone.close()
    return seen


@pytest.mark.timeout(30)
def test_a_released_call_leaves_alone_the_later_call_that_took_its_pjsua_id(sipp_uas: str):
    seen = reuse_an_id(sipp_uas)
    assert seen["all answered"] and not seen["can dial when full"], seen
    assert seen["old ended"] and not seen["can dial before the BYE's answer"] and seen["can dial after it"], seen
    assert seen["new id"] == 0, seen  # pjsua gave the new call the id the old one had
    assert seen["new"] == (True, False, 200, True), f"the new call was hung up or lost its callbacks: {seen}"
    assert seen["old object went"], seen  # once the id was free
