"""Events the media core reports, as frozen dataclasses stamped with the clock time `t` (seconds)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpeechStarted:
    """The caller started speaking (VAD onset on the inbound path)."""

    t: float


@dataclass(frozen=True)
class SpeechStopped:
    t: float
    duration_s: float


@dataclass(frozen=True)
class BargeInPaused:
    """Caller onset while the agent spoke: playout paused in this very tick (with what the detector saw)."""

    t: float
    level_db: float = 0.0
    threshold_db: float = 0.0
    echo: str = ""


@dataclass(frozen=True)
class BargeInResumed:
    """The onset was not confirmed (a backchannel, a click); playout goes on where it stopped."""

    t: float
    paused_ms: float
    by: str = "duration"
    """What decided: `duration` (the burst ended within `confirm_ms`) or `words` (its transcript was a backchannel)."""


@dataclass(frozen=True)
class BargeInConfirmed:
    """The caller really talks over the agent: playout was flushed; the agent must cancel its reply."""

    t: float
    onset_t: float
    by: str = "duration"
    """What decided: `duration` (speech lasted `confirm_ms`) or `words` (its transcript was no backchannel)."""


@dataclass(frozen=True)
class PlayoutStarted:
    """The first frame of one pushed item went out on this tick (`t`): the caller's first packet of it."""

    t: float
    item: int


@dataclass(frozen=True)
class PlayoutFinished:
    """Every frame of one pushed item reached the caller."""

    t: float
    item: int
    played_ms: int


@dataclass(frozen=True)
class PlayoutFlushed:
    """An item was dropped by a flush after `played_ms` of it reached the caller."""

    t: float
    item: int
    played_ms: int


MediaEvent = (
    SpeechStarted | SpeechStopped | BargeInPaused | BargeInResumed | BargeInConfirmed | PlayoutStarted
    | PlayoutFinished | PlayoutFlushed
)
