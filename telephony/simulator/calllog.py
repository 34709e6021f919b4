"""The simulated phone's SIP trace and pjsua log, kept in memory and written out for the calls that failed.

pjsua logs each SIP message as one entry (telephony/sip_trace.py reads the same entries on the gateway's side);
`CallLog` keeps the messages by Call-ID, and pjsua's other lines (transaction and call states, the phone's own
`onCallState` notes) in a ring with their wall time, so that a failed call's trace is its messages together with
what the process logged while the call lasted. A soak of hundreds of passing calls keeps no file of them; memory
is bounded by `max_calls` Call-IDs (the oldest forgotten first) and `max_lines` other lines.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

from telephony.sip_trace import is_message, message_call_id


def stamp(t: float) -> str:
    """`HH:MM:SS.mmm` of a wall time, in UTC."""
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}"


class CallLog:
    """pjsua's log entries of one phone process: `add` from any thread, `dump` a call's part of it."""

    def __init__(self, max_calls: int = 64, max_lines: int = 50000) -> None:
        self.max_calls = max_calls
        self._calls: OrderedDict[str, list[tuple[float, str]]] = OrderedDict()
        self._lines: deque[tuple[float, str]] = deque(maxlen=max_lines)
        self._lock = threading.Lock()

    def add(self, now: float, text: str) -> None:
        """One log entry at wall time `now`: a SIP message goes to its Call-ID, anything else to the ring."""
        text = text.rstrip()
        if not text:
            return
        call_id = message_call_id(text) if is_message(text) else None
        with self._lock:
            if call_id is None:
                self._lines.append((now, text))
                return
            if call_id not in self._calls:
                self._calls[call_id] = []
                while len(self._calls) > self.max_calls:
                    self._calls.popitem(last=False)
            self._calls[call_id].append((now, text))

    def dump(self, call_id: str, start: float, end: float) -> str:
        """The call's SIP messages and every other line logged from `start` to `end`, in time order."""
        with self._lock:
            entries = [*self._calls.get(call_id, []), *(e for e in self._lines if start <= e[0] <= end)]
        entries.sort(key=lambda e: e[0])
        return "".join(f"{stamp(t)} {text}\n" for t, text in entries)

    def forget(self, call_id: str) -> None:
        with self._lock:
            self._calls.pop(call_id, None)
