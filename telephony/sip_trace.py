"""Per-call SIP traces: every SIP message pjsip sends or receives, appended to one file per Call-ID.

pjsip logs each message at level 4 as `RX|TX <n> bytes <what> from|to <transport> <addr>:\\n<message>\\n--end msg--`
(pjsua's message logging); the gateway's log writer hands those entries here. A message without a Call-ID header
(a stray response, a keepalive) goes to no file.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from telephony.logs import event

MESSAGE_LEVEL = 4
"""pjsip's log level of its message logging."""
_END = "--end msg--"
_CALL_ID = re.compile(r"^(?:Call-ID|i)[ \t]*:[ \t]*(\S+)[ \t]*\r?$", re.M | re.I)
_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]")


def is_message(text: str) -> bool:
    return text.startswith(("RX ", "TX ")) and text.rstrip().endswith(_END)


def message_call_id(text: str) -> str | None:
    """The Call-ID of a logged SIP message (long or compact header form), or None."""
    head, _, message = text.partition("\n")
    m = _CALL_ID.search(message.split("\n\n", 1)[0].split("\r\n\r\n", 1)[0])
    return m.group(1) if m else None


def trace_path(folder: Path, call_id: str) -> Path:
    """The trace file of a Call-ID (characters unsafe in a file name become `_`)."""
    return folder / f"{_UNSAFE.sub('_', call_id)[:200]}.sip"


class SipTrace:
    """Appends logged SIP messages to `folder/<Call-ID>.sip`, each headed by the time it was logged."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()

    def write(self, text: str) -> bool:
        """Keep `text` if it is a logged SIP message of a call; False if it is not one."""
        if not is_message(text):
            return False
        call_id = message_call_id(text)
        if call_id is None:
            return True
        body = text.rstrip().removesuffix(_END).rstrip("\n")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"
        with self._lock:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                with trace_path(self.folder, call_id).open("a", encoding="utf-8") as f:
                    f.write(f"{stamp} {body}\n\n")
            except OSError as e:
                event("sip_trace_error", path=str(self.folder), error=e.strerror or str(e))
        return True
