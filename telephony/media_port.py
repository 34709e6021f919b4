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

from media.frames import FRAME_BYTES, FRAME_MS, SAMPLE_RATE, SILENCE
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
    """Connects one call's conference slot to its CallMedia (`media` None: the port is idle in the pool).

    Ports are never destroyed while the media clock runs: a port freed by Python while the clock thread was inside
    its callback crashed the process (seen as "object has no attribute" followed by a segfault). `PortPool`
    reuses them instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.media: CallMedia | None = None
        self.call_id = ""
        self._errors = 0

    def onFrameReceived(self, frame: Any) -> None:  # noqa: N802 (pjsua2's name)
        try:
            media = self.media
            if media is not None and frame.type == _AUDIO and frame.size == FRAME_BYTES:
                media.on_inbound(time.monotonic(), read_buf(frame.buf, FRAME_BYTES))
        except Exception as e:  # never let an exception cross into pjmedia's clock thread
            self._report(e)

    def onFrameRequested(self, frame: Any) -> None:  # noqa: N802
        try:
            media = self.media
            write_buf(frame.buf, media.next_outbound(time.monotonic()) if media is not None else SILENCE)
            frame.size = FRAME_BYTES
            frame.type = _AUDIO
        except Exception as e:
            self._report(e)

    def _report(self, e: Exception) -> None:
        self._errors += 1
        if self._errors <= 3:
            event("media_error", call=self.call_id, error=repr(e))


class PortPool:
    """Media ports made once and reused by later calls; pjsua thread only."""

    def __init__(self) -> None:
        self._free: list[CallMediaPort] = []
        self._all: list[CallMediaPort] = []

    def acquire(self, media: CallMedia, call_id: str) -> CallMediaPort:
        if self._free:
            port = self._free.pop()
        else:
            port = CallMediaPort()
            port.createPort(f"vg-port-{len(self._all)}", audio_format())
            self._all.append(port)
        port.call_id = call_id
        port._errors = 0
        port.media = media
        return port

    def release(self, port: CallMediaPort) -> None:
        port.media = None
        self._free.append(port)

    def clear(self) -> None:
        """Drop every port: only once the media clock has stopped."""
        self._free.clear()
        self._all.clear()
