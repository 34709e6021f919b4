"""One call's media: inbound frame -> VAD -> barge-in detector; playout buffer -> outbound frame.

`on_inbound` and `next_outbound` run on the media clock thread and do microseconds of work; the pause that a caller
onset causes takes effect in the same tick. The agent side (another thread) calls `push`, `flush` and
`set_loopback`; a lock keeps the two sides consistent. Events go to `emit`, which must be thread-safe and quick.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from media.barge_in import BargeInDetector, DetectorSettings
from media.events import BargeInConfirmed, BargeInPaused, BargeInResumed, MediaEvent
from media.frames import FLOOR_DBFS, FRAME_BYTES, SILENCE, level_dbfs, samples_dbfs
from media.playout import PlayoutBuffer
from media.recorder import StereoRecorder
from media.vad import Vad


@dataclass
class MediaStats:
    frames_in: int = 0
    frames_out: int = 0
    speech_frames_out: int = 0
    last_inbound_t: float = 0.0
    last_outbound_t: float = 0.0
    tick_ms: deque[float] = field(default_factory=lambda: deque(maxlen=3000))
    """Intervals between outbound ticks (the media clock's jitter), the last minute of them."""

    def tick_percentiles(self) -> dict[str, float]:
        if not self.tick_ms:
            return {}
        a = np.asarray(tuple(self.tick_ms), dtype=np.float64)  # tuple() copies atomically; the clock appends
        p50, p99 = np.percentile(a, [50, 99])
        return {"tick_p50_ms": round(float(p50), 2), "tick_p99_ms": round(float(p99), 2),
                "tick_max_ms": round(float(a.max()), 2)}


class CallMedia:
    def __init__(
        self,
        emit: Callable[[MediaEvent], None],
        settings: DetectorSettings | None = None,
        vad_aggressiveness: int = 2,
        barge_in: bool = True,
    ) -> None:
        self._emit = emit
        self._tap: Callable[[float, bytes, bool], None] | None = None
        self._recorder: StereoRecorder | None = None
        self._vad = Vad(vad_aggressiveness)
        self.detector = BargeInDetector(settings)
        self.playout = PlayoutBuffer()
        self.barge_in = barge_in
        self.interruptible = True
        self._lock = threading.Lock()
        self._loop: deque[bytes] | None = None
        self.stats = MediaStats()

    # -- clock thread -------------------------------------------------------------------------------------
    def on_inbound(self, now: float, frame: bytes) -> None:
        if len(frame) != FRAME_BYTES:
            return
        self.stats.frames_in += 1
        self.stats.last_inbound_t = now
        rec = self._recorder
        if rec is not None:
            rec.inbound(frame)
        if self._loop is not None:
            self._loop.append(frame)
            return  # echo mode plays the caller back: nothing to detect
        samples = np.frombuffer(frame, dtype="<i2")
        level = samples_dbfs(samples)
        speech = self._vad.is_speech(frame)
        events: list[MediaEvent]
        with self._lock:
            speaking = self.barge_in and self.interruptible and self.playout.speaking
            events = self._apply(now, self.detector.process(now, samples, level, speech, speaking))
        for ev in events:
            self._emit(ev)
        tap = self._tap
        if tap is not None:
            tap(now, frame, self.detector.candidate)

    def _apply(self, now: float, events: list[MediaEvent]) -> list[MediaEvent]:
        """Pause, resume or flush playout as the detector's events say (under the lock); the events with the
        flush's."""
        for ev in events:
            if isinstance(ev, BargeInPaused):
                self.playout.pause()
            elif isinstance(ev, BargeInResumed):
                self.playout.resume()
            elif isinstance(ev, BargeInConfirmed):
                events = events + self.playout.flush(now)
        return events

    def next_outbound(self, now: float) -> bytes:
        out = self.next_audio(now)
        return out if out is not None else SILENCE

    def next_audio(self, now: float) -> bytes | None:
        """This tick's outbound frame, or None when there is nothing to play (a transport may then send nothing)."""
        st = self.stats
        if st.last_outbound_t:
            st.tick_ms.append((now - st.last_outbound_t) * 1000.0)
        st.last_outbound_t = now
        loop = self._loop
        if loop is not None:
            frame = loop.popleft() if loop else None
            self.detector.played(FLOOR_DBFS)
            self.stats.frames_out += 1
            self._record_out(frame if frame is not None else SILENCE)
            return frame
        with self._lock:
            out, events = self.playout.next_frame(now)
        self.detector.played(level_dbfs(out) if out is not None else FLOOR_DBFS)
        self.stats.frames_out += 1
        if out is not None:
            self.stats.speech_frames_out += 1
        for ev in events:
            self._emit(ev)
        self._record_out(out if out is not None else SILENCE)
        return out

    def _record_out(self, frame: bytes) -> None:
        rec = self._recorder
        if rec is not None:
            rec.outbound(frame)

    # -- agent side ---------------------------------------------------------------------------------------
    def push(self, pcm: bytes, item: int, last: bool = True, interruptible: bool = True) -> None:
        with self._lock:
            self.interruptible = interruptible
            self.playout.push(pcm, item, last)

    def flush(self, now: float) -> None:
        with self._lock:
            events = self.playout.flush(now)
        for ev in events:
            self._emit(ev)

    def hold_for_words(self, wait_ms: int | None, confirm_early: bool = True) -> None:
        """The agent hears words and decides pauses too (`decide`; BargeInDetector.hold_for_words)."""
        with self._lock:
            self.detector.hold_for_words(wait_ms, confirm_early)

    def decide(self, now: float, backchannel: bool) -> None:
        """The words of the caller's burst over the agent: a backchannel resumes a pause where it stopped, anything
        else confirms the barge-in at once (flush), unless nothing interruptible is left to cut."""
        with self._lock:
            if not (backchannel or self.detector.paused or (self.barge_in and self.interruptible
                                                              and self.playout.pending)):
                return
            events = self._apply(now, self.detector.decide(now, backchannel))
        for ev in events:
            self._emit(ev)

    def dtmf(self, now: float) -> None:
        with self._lock:
            self.detector.note_dtmf(now)

    def set_tap(self, tap: Callable[[float, bytes, bool], None] | None) -> None:
        """Hand every inbound frame, with whether it counted as caller speech, to `tap` (on the clock thread)."""
        self._tap = tap

    def set_recorder(self, recorder: StereoRecorder | None) -> None:
        """Hand every inbound and outbound frame to `recorder` (on the clock thread)."""
        self._recorder = recorder

    def mask_recording(self, on: bool) -> None:
        """Record silence on both channels while on (secure capture)."""
        rec = self._recorder
        if rec is not None:
            rec.masked = on

    def pause_recording(self, on: bool, by: str) -> bool:
        """Pause (silence on both channels) or resume the call's recording; False when the call is not recorded."""
        rec = self._recorder
        if rec is None:
            return False
        rec.set_paused(on, by)
        return True

    def set_loopback(self, on: bool) -> None:
        """Echo mode: inbound frames go straight back out on the clock thread (at most 3 frames queued)."""
        self._loop = deque(maxlen=3) if on else None
