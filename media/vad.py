"""Frame-level voice activity: webrtcvad (about 2 us a frame), cheap enough for the clock thread."""

from __future__ import annotations

import webrtcvad

from media.frames import FRAME_BYTES, SAMPLE_RATE


class Vad:
    def __init__(self, aggressiveness: int = 2) -> None:
        if not 0 <= aggressiveness <= 3:
            raise ValueError(f"VAD aggressiveness must be 0-3, got {aggressiveness}")
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: bytes) -> bool:
        if len(frame) != FRAME_BYTES:
            raise ValueError(f"VAD frame must be {FRAME_BYTES} bytes, got {len(frame)}")
        return bool(self._vad.is_speech(frame, SAMPLE_RATE))
