"""DTMF arriving both as RFC 4733 events and as SIP INFO for one key press counts once (sans-IO)."""

from __future__ import annotations


class DtmfDeduper:
    def __init__(self, window_s: float = 0.3) -> None:
        self.window_s = window_s
        self._last: tuple[str, str, float] | None = None

    def accept(self, now: float, digit: str, method: str) -> bool:
        """True if this digit is a new key press, False if it repeats the same press by the other method."""
        last = self._last
        self._last = (digit, method, now)
        if last is None:
            return True
        d, m, t = last
        return not (d == digit and m != method and now - t <= self.window_s)
