"""Call recordings: a route's calls as stereo WAV (caller left, agent right) with their transcripts beside them.

`start_recording` attaches a `media.recorder.StereoRecorder` to a call's media when its route has `recording:`; the
loop appends the finished frames to the WAV every second (stdlib `wave`, which fixes the header on close), DTMF codes
(and the agent, through the call's media) pause and resume it, and `close` at the call's end writes the rest and the
transcript (the call's turns, already redacted) and returns the fields for the call record. A write error is logged
(`recording_error`) and ends the recording, never the call.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import wave
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from media.frames import FRAME_MS, SAMPLE_RATE
from media.pipeline import CallMedia
from media.recorder import StereoRecorder
from telephony.config import Config, RecordingConfig

FLUSH_S = 1.0
LAG_TICKS = 5
"""The newest slots stay queued at a flush: their caller frames may not be in yet."""


class Log(Protocol):
    def __call__(self, name: str, **fields: object) -> None: ...


def recording_name(call_id: str, wall: float) -> str:
    """`20261125-203000-<call id made file-safe>`."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(wall)) + "-" + re.sub(r"[^A-Za-z0-9._-]", "_", call_id)[:64]


class CallRecording:
    def __init__(self, call_id: str, path: Path, cfg: RecordingConfig, log: Log) -> None:
        self.call_id = call_id
        self.path = path
        self.cfg = cfg
        self.log = log
        self.recorder = StereoRecorder()
        self._keys = ""
        self._wav: wave.Wave_write | None = None
        self._failed = False
        self._task: asyncio.Task[None] | None = None

    def on_dtmf(self, digit: str) -> None:
        """A key the caller pressed (any thread; the agent gets it too): pause or resume when the last keys spell a
        code."""
        self._keys = (self._keys + digit)[-8:]
        if self.cfg.pause_code and self._keys.endswith(self.cfg.pause_code) and self.recorder.set_paused(True, "dtmf"):
            self._keys = ""
            self.log("recording_paused", call=self.call_id, by="dtmf")
        elif self.cfg.resume_code and self._keys.endswith(self.cfg.resume_code) and self.recorder.set_paused(False,
                                                                                                            "dtmf"):
            self._keys = ""
            self.log("recording_resumed", call=self.call_id, by="dtmf")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start appending on `loop` (from any thread)."""

        def start() -> None:
            self._task = asyncio.ensure_future(self._run())

        loop.call_soon_threadsafe(start)

    async def _run(self) -> None:
        """Append the finished frames every second until `close`."""
        while True:
            await asyncio.sleep(FLUSH_S)
            self._write(self.recorder.take(self.recorder.ticks - LAG_TICKS))

    def _write(self, pcm: bytes) -> None:
        if self._failed or not pcm:
            return
        try:
            if self._wav is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._wav = wave.open(str(self.path), "wb")  # noqa: SIM115 (open across flushes; closed in close())
                self._wav.setnchannels(2)
                self._wav.setsampwidth(2)
                self._wav.setframerate(SAMPLE_RATE)
            self._wav.writeframes(pcm)
        except (OSError, wave.Error) as e:
            self._failed = True
            self.log("recording_error", call=self.call_id, path=str(self.path), error=str(e))

    def close(self, turns: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Write the rest and the transcript; the call record's fields (`recording`, `recording_s`, ...)."""
        if self._task is not None:
            self._task.cancel()
        self._write(self.recorder.take())
        if self._wav is None:
            return {}
        frames = self._wav.getnframes()
        try:
            self._wav.close()  # writes the header's final lengths
        except (OSError, wave.Error) as e:
            self._failed = True
            self.log("recording_error", call=self.call_id, path=str(self.path), error=str(e))
        if self._failed:
            return {"recording": str(self.path), "recording_error": True}  # what was written, for `voicegate erase`
        out: dict[str, Any] = {"recording": str(self.path), "recording_s": round(frames / SAMPLE_RATE, 2),
                               "recording_paused_s": round(self.recorder.paused_ticks * FRAME_MS / 1000, 2)}
        if self.recorder.pauses:
            out["recording_pauses"] = self.recorder.pause_intervals()
        if turns:
            transcript = self.path.with_suffix(".json")
            try:
                transcript.write_text(json.dumps({"call": self.call_id, "turns": list(turns)}, indent=1,
                                                 default=str))
                out["transcript"] = str(transcript)
            except OSError as e:
                self.log("recording_error", call=self.call_id, path=str(transcript), error=e.strerror or str(e))
        return out


def start_recording(config: Config, called: str, call_id: str, media: CallMedia, loop: asyncio.AbstractEventLoop,
                    log: Log) -> CallRecording | None:
    """The call's recording, attached to its media and flushing on `loop`, when its route records (any thread)."""
    route = config.route_for(called)
    if route is None or route.recording is None or not route.recording.enabled:
        return None
    path = Path(config.records.recordings_path) / f"{recording_name(call_id, time.time())}.wav"
    rec = CallRecording(call_id, path, route.recording, log)
    media.set_recorder(rec.recorder)
    rec.start(loop)
    return rec
