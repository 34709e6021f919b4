"""The conversation of a speech-to-speech call as the caller heard it, kept to replay into a new session.

A Realtime session lives at most 60 minutes and a dropped one forgets everything; the backend then opens a new one
and replays this history as text items. Turns are placed when they begin (the caller's when their audio is
committed, the model's when its response is created) and filled when their text is known (the caller's transcript
comes later, from a separate ASR model), so the order is the order of speech, whatever order the texts arrive in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Role = Literal["user", "assistant"]


class History:
    def __init__(self, start: Sequence[tuple[Role, str]] = ()) -> None:
        self._turns: list[tuple[Role, str]] = list(start)
        self._open: dict[str, int] = {}

    def open(self, role: Role, key: str) -> None:
        """A turn has begun; its text follows with `fill(key, ...)`."""
        if key not in self._open:
            self._open[key] = len(self._turns)
            self._turns.append((role, ""))

    def fill(self, key: str, text: str) -> None:
        i = self._open.pop(key, None)
        if i is not None:
            self._turns[i] = (self._turns[i][0], text.strip())

    def messages(self) -> tuple[tuple[Role, str], ...]:
        """The turns with text, in the order they were spoken."""
        return tuple((role, text) for role, text in self._turns if text)


def heard_text(transcript: str, heard_ms: float, audio_ms: float) -> str:
    """What the caller heard of a reply cut after `heard_ms` of `audio_ms`: its first words in proportion, and an
    ellipsis (word timings are not sent, so the cut is estimated from the audio's length)."""
    words = transcript.split()
    if audio_ms <= 0 or heard_ms >= audio_ms - 20:
        return transcript.strip()
    n = round(len(words) * max(0.0, heard_ms) / audio_ms)
    return " ".join(words[:n]) + "…" if n else ""
