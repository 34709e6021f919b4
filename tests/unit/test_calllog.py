"""The phone's in-memory trace: SIP messages by Call-ID, other log lines by time, bounded."""

from __future__ import annotations

from telephony.simulator.calllog import CallLog


def message(call_id: str, what: str = "INVITE sip:echo@127.0.0.1 SIP/2.0") -> str:
    return (f"TX 300 bytes Request msg INVITE/cseq=1 (tdta0x1) to UDP 127.0.0.1:5060:\n{what}\n"
            f"Call-ID: {call_id}\nCSeq: 1 INVITE\n\n--end msg--")


def test_a_calls_dump_holds_its_messages_and_the_lines_logged_while_it_lasted():
    log = CallLog()
    log.add(10.0, "[pjsua] before the call")
    log.add(11.0, message("a"))
    log.add(11.5, "[pjsua] Call 1 state changed to CONFIRMED")
    log.add(12.0, message("b"))
    log.add(13.0, message("a", "BYE sip:echo@127.0.0.1 SIP/2.0"))
    log.add(20.0, "[pjsua] after the call")
    text = log.dump("a", 10.5, 13.5)
    assert "Call-ID: a" in text and "Call-ID: b" not in text
    assert "state changed to CONFIRMED" in text and "before the call" not in text and "after the call" not in text
    assert text.index("INVITE sip:") < text.index("CONFIRMED") < text.index("BYE sip:")  # in time order
    assert text.splitlines()[0].endswith(message("a").splitlines()[0]) and text.startswith("00:00:11.000 ")


def test_the_log_forgets_a_call_and_keeps_at_most_max_calls_and_max_lines():
    log = CallLog(max_calls=2, max_lines=3)
    for i, cid in enumerate("abc"):
        log.add(float(i), message(cid))
    assert log.dump("a", 0, 10) == ""  # the oldest Call-ID went
    assert "Call-ID: c" in log.dump("c", 0, 10)
    log.forget("c")
    assert log.dump("c", 0, 10) == ""
    for i in range(5):
        log.add(float(i), f"line {i}")
    assert [ln.split(" ", 1)[1] for ln in log.dump("x", 0, 10).splitlines()] == ["line 2", "line 3", "line 4"]
