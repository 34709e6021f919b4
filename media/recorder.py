"""A call's stereo recording, caller left and agent right, aligned by the media clock's ticks (sans-IO).

The clock thread hands each outbound frame (the conference bridge asks for one every tick) to `outbound`, which
opens the next slot, and each inbound frame to `inbound`, which fills the current slot; a tick without caller audio
(no RTP, hold) is silence, so the channels never shift against each other. Wall-clock time is not used: a late tick
on a busy machine still gets its own slot. A caller frame never overwrites another (the tick's slot did): a second
one in a tick (a stream transport's loop that stalled, then read the caller's backlog at once) takes the next free
slot, so the recording keeps all of the caller's audio, from then on as late as the largest backlog was. The loop
takes the interleaved PCM of finished slots with `take`. While `paused` or `masked` (secure capture), both channels
record silence: the file stays as long as the call. Pauses (`set_paused`, by a DTMF code or the agent) are kept as
intervals of the recording's own time line, for the call record. The clock thread's share is about 1 us per tick
for both frames (measured).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from media.frames import FRAME_BYTES, FRAME_MS, FRAME_SAMPLES


@dataclass
class Pause:
    """A paused stretch of the recording, in slots (20 ms ticks) from its start; `end` None while it lasts."""

    start: int
    end: int | None
    by: str


class StereoRecorder:
    def __init__(self) -> None:
        self._in: deque[tuple[int, bytes]] = deque()  # deques: the clock thread appends while the loop pops
        self._out: deque[bytes] = deque()
        self.paused = False
        self.masked = False
        """Silence while a card number or PIN is being keyed (secure capture); independent of `paused`."""
        self.ticks = 0
        """Slots opened so far (outbound frames seen)."""
        self.taken = 0
        """Slots already returned by `take`."""
        self.paused_ticks = 0
        """Slots recorded as silence because of `paused`."""
        self.pauses: list[Pause] = []
        self._next_in = 0
        """The first slot a caller frame may take (each takes its own)."""

    # -- loop (or the SIP thread, for a DTMF code) ----------------------------------------------------------
    def set_paused(self, on: bool, by: str) -> bool:
        """Pause (record silence from the next slot on) or resume; `by` says who (`agent`, `dtmf`). False when the
        recording already was in that state."""
        if on == self.paused:
            return False
        if on:
            self.pauses.append(Pause(self.ticks, None, by))
        else:
            self.pauses[-1].end = self.ticks
        self.paused = on
        return True

    def pause_intervals(self) -> list[dict[str, float | str]]:
        """Each pause as `{start_s, end_s, by}` in seconds of the recording (a pause still on ends at its end)."""
        return [{"start_s": round(p.start * FRAME_MS / 1000, 2),
                 "end_s": round((self.ticks if p.end is None else p.end) * FRAME_MS / 1000, 2), "by": p.by}
                for p in self.pauses]

    # -- clock thread -------------------------------------------------------------------------------------
    def outbound(self, frame: bytes) -> None:
        self._out.append(b"" if self.paused or self.masked else frame)
        self.ticks += 1
        if self.paused:
            self.paused_ticks += 1

    def inbound(self, frame: bytes) -> None:
        """The caller's frame of the current tick: into the slot the tick's outbound frame opened (pjmedia's bridge
        asks for a port's frame before it hands it the mix), or the next free one."""
        slot = max(self.ticks - 1, self._next_in)
        self._next_in = slot + 1
        self._in.append((slot, b"" if self.paused or self.masked else frame))

    # -- loop ---------------------------------------------------------------------------------------------
    def take(self, upto: int | None = None) -> bytes:
        """Interleaved stereo PCM16 of the slots before `upto` not taken yet; without `upto` (the call's end), every
        slot opened so far and those the caller's queued frames fill. A caller frame for a slot already taken is
        dropped."""
        end = max(self.ticks, self._next_in) if upto is None else min(upto, self.ticks)
        n = end - self.taken
        if n <= 0:
            return b""
        out = np.zeros((n * FRAME_SAMPLES, 2), dtype="<i2")
        for i in range(min(n, len(self._out))):
            frame = self._out.popleft()
            if len(frame) == FRAME_BYTES:
                out[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES, 1] = np.frombuffer(frame, dtype="<i2")
        while self._in and self._in[0][0] < end:
            slot, frame = self._in.popleft()
            i = slot - self.taken
            if 0 <= i < n and len(frame) == FRAME_BYTES:
                out[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES, 0] = np.frombuffer(frame, dtype="<i2")
        self.taken = end
        return out.tobytes()
