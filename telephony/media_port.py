"""The per-call pjsua2 AudioMediaPort: 16 kHz mono 20 ms frames between the conference bridge and CallMedia.

Its callbacks run on pjmedia's clock thread for every call, every 20 ms, so they do microseconds of work: the
frame buffer (a SWIG proxy of a C++ std::vector<unsigned char>) is read and written through ctypes, since
`bytes(frame.buf)` costs about 300 us and building a new ByteVector about 30 us (measured). The layout trick
(the proxy's `this` is the address of the vector, whose first word points at its data) belongs to libstdc++ and
to this wheel, so `check_frame_layout()` verifies it at start-up.
"""

from __future__ import annotations

import ctypes
import time
from typing import Any

import pjsua2 as pj

from media.frames import FRAME_BYTES, FRAME_MS, SAMPLE_RATE
from media.pipeline import CallMedia
from telephony.errors import PjsuaBuildError
from telephony.logs import event

_AUDIO = pj.PJMEDIA_FRAME_TYPE_AUDIO


def _data_ptr(vec: Any) -> int:
    return ctypes.c_void_p.from_address(int(vec.this)).value or 0


def read_buf(vec: Any, size: int) -> bytes:
    """The first `size` bytes of a pjsua2 ByteVector, without SWIG's per-element copy."""
    return ctypes.string_at(_data_ptr(vec), size)


def write_buf(vec: Any, data: bytes) -> None:
    vec.resize(len(data))
    ctypes.memmove(_data_ptr(vec), data, len(data))


def check_frame_layout() -> None:
    """Fail clearly if ByteVector's memory layout is not what read_buf/write_buf assume."""
    probe = bytes(range(256)) * 3
    vec = pj.ByteVector(probe)
    if read_buf(vec, len(probe)) != probe:
        raise PjsuaBuildError("pjsua2 ByteVector layout is not libstdc++'s std::vector: frame reads would be wrong")
    out = pj.ByteVector()
    write_buf(out, probe[::-1])
    if out.size() != len(probe) or read_buf(out, len(probe)) != probe[::-1]:
        raise PjsuaBuildError("pjsua2 ByteVector cannot be written through its data pointer")


def audio_format() -> Any:
    fmt = pj.MediaFormatAudio()
    fmt.init(pj.PJMEDIA_FORMAT_PCM, SAMPLE_RATE, 1, FRAME_MS * 1000, 16)
    return fmt


class CallMediaPort(pj.AudioMediaPort):  # type: ignore[misc]
    """Connects one call's conference slot to its CallMedia."""

    def __init__(self, media: CallMedia, call_id: str) -> None:
        super().__init__()
        self.media = media
        self.call_id = call_id
        self._errors = 0

    def onFrameReceived(self, frame: Any) -> None:  # noqa: N802 (pjsua2's name)
        try:
            if frame.type == _AUDIO and frame.size == FRAME_BYTES:
                self.media.on_inbound(time.monotonic(), read_buf(frame.buf, FRAME_BYTES))
        except Exception as e:  # never let an exception cross into pjmedia's clock thread
            self._report(e)

    def onFrameRequested(self, frame: Any) -> None:  # noqa: N802
        try:
            write_buf(frame.buf, self.media.next_outbound(time.monotonic()))
            frame.size = FRAME_BYTES
            frame.type = _AUDIO
        except Exception as e:
            self._report(e)

    def _report(self, e: Exception) -> None:
        self._errors += 1
        if self._errors <= 3:
            event("media_error", call=self.call_id, error=repr(e))
