"""Per-call playout buffer of agent audio: queue, instant pause/resume/flush, and per-item played marks."""

from __future__ import annotations

from collections import deque

from media.events import MediaEvent, PlayoutFinished, PlayoutFlushed, PlayoutStarted
from media.frames import FRAME_MS, split_frames


class PlayoutBuffer:
    """Frames queued by the agent side and taken one per tick by the clock side.

    Each `push` belongs to an item (one utterance); the buffer counts how much of each item was played, which is
    what a barge-in truncates the agent's transcript to.
    """

    def __init__(self) -> None:
        self._frames: deque[tuple[bytes, int, bool]] = deque()
        self._played: dict[int, int] = {}
        self._open: set[int] = set()
        self.paused = False

    def push(self, pcm: bytes, item: int, last: bool = True) -> None:
        """Queue audio of `item`; `last` marks the final chunk of that item."""
        frames = split_frames(pcm) if pcm else []
        self._played.setdefault(item, 0)
        self._open.add(item)
        for i, f in enumerate(frames):
            self._frames.append((f, item, last and i == len(frames) - 1))
        if last and not frames:
            self._frames.append((b"", item, True))

    @property
    def speaking(self) -> bool:
        """Agent audio is queued and not paused."""
        return bool(self._frames) and not self.paused

    @property
    def pending(self) -> bool:
        return bool(self._frames)

    def next_frame(self, now: float) -> tuple[bytes | None, list[MediaEvent]]:
        """The frame to send this tick (None: send silence), and the events it caused."""
        if self.paused:
            return None, []
        while self._frames:
            frame, item, last = self._frames.popleft()
            events: list[MediaEvent] = []
            if frame:
                if not self._played[item]:
                    events.append(PlayoutStarted(now, item))
                self._played[item] += FRAME_MS
            if last:
                self._open.discard(item)
                events.append(PlayoutFinished(now, item, self._played.pop(item)))
            if frame:
                return frame, events
            if events:
                return None, events
        return None, []

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def flush(self, now: float) -> list[MediaEvent]:
        """Drop everything queued; report how much of each open item was heard."""
        self._frames.clear()
        self.paused = False
        events: list[MediaEvent] = [PlayoutFlushed(now, item, self._played.pop(item, 0)) for item in sorted(self._open)]
        self._open.clear()
        return events
