"""One trunk's registration state, sans-IO: fed pjsua's REGISTER results with `now`, it says what to log and when
to try again.

pjsua refreshes a live registration by itself (`delayBeforeRefreshSec` before expiry). Its own retry after a
failure is off (`retryIntervalSec = 0`): it retries only some status codes, at one fixed interval. Here every
failure (a 4xx such as a wrong password, a 5xx, a timeout, a refused connection) waits `retry_min_s`, doubling
with each failure in a row up to `retry_max_s`, so a registrar that never answers is not hammered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

State = Literal["unregistered", "registering", "registered", "failed"]


@dataclass
class Registration:
    name: str
    retry_min_s: float
    retry_max_s: float
    state: State = "unregistered"
    last_code: int = 0
    last_reason: str = ""
    failures: int = 0
    """Failed attempts in a row."""
    refreshes: int = 0
    """Successful re-registrations after the first."""
    registered_at: float | None = None
    expires_at: float | None = None
    next_retry: float | None = None

    def started(self, now: float, renew: bool) -> list[dict[str, Any]]:
        """pjsua sends a REGISTER (`renew=False`: an un-REGISTER)."""
        if self.state == "registered" or not renew:
            return []  # a refresh of a live registration is not a state change
        self.state = "registering"
        return [self._event(now)]

    def result(self, now: float, code: int, reason: str, expires_s: int) -> list[dict[str, Any]]:
        """pjsua's final answer to a REGISTER: the status code (pjsip makes 408/503 of timeouts and transport
        errors) and the expiry the registrar granted (0 when unregistered or failed)."""
        refresh = self.state == "registered"
        self.last_code, self.last_reason = code, reason
        if 200 <= code < 300 and expires_s > 0:
            self.refreshes += refresh
            self.state, self.failures = "registered", 0
            self.registered_at, self.expires_at, self.next_retry = now, now + expires_s, None
        elif 200 <= code < 300:
            self.state, self.expires_at, self.next_retry = "unregistered", None, None
        else:
            self.failures += 1
            self.state, self.expires_at = "failed", None
            self.next_retry = now + self.backoff_s()
        return [self._event(now, refresh=refresh and self.state == "registered")]

    def backoff_s(self) -> float:
        """The wait after the current run of failures."""
        return float(min(self.retry_max_s, self.retry_min_s * 2 ** max(self.failures - 1, 0)))

    def due(self, now: float) -> bool:
        """Whether a failed registration should be tried again now; if so, it counts as started."""
        if self.state != "failed" or self.next_retry is None or now < self.next_retry:
            return False
        self.next_retry = None
        self.state = "registering"
        return True

    def status(self, now: float, wall_now: float) -> dict[str, Any]:
        """A JSON-able snapshot, with times as wall-clock seconds (`now` and `wall_now` are the same instant)."""

        def wall(t: float | None) -> float | None:
            return None if t is None else round(wall_now + (t - now), 3)

        return {
            "trunk": self.name, "state": self.state, "code": self.last_code, "reason": self.last_reason,
            "failures": self.failures, "refreshes": self.refreshes, "registered_at": wall(self.registered_at),
            "expires_at": wall(self.expires_at), "next_retry": wall(self.next_retry),
        }

    def _event(self, now: float, refresh: bool = False) -> dict[str, Any]:
        ev: dict[str, Any] = {"trunk": self.name, "state": self.state, "code": self.last_code,
                              "reason": self.last_reason, "failures": self.failures, "refreshes": self.refreshes}
        if self.expires_at is not None:
            ev["expires_s"] = round(self.expires_at - now, 1)
        if self.next_retry is not None:
            ev["retry_in_s"] = round(self.next_retry - now, 1)
        if refresh:
            ev["refresh"] = True
        return ev
