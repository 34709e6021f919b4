"""The per-call pjsua2 AudioMediaPort: 16 kHz mono 20 ms frames between the conference bridge and CallMedia.

Its callbacks run on pjmedia's clock thread for every call, every 20 ms, so they do microseconds of work: the
frame buffer (a SWIG proxy of a C++ std::vector<unsigned char>) is read and written through ctypes, since
`bytes(frame.buf)` costs about 300 us and building a new ByteVector about 30 us (measured). The layout trick
(the proxy's `this` is the address of the vector, whose first word points at its data) belongs to libstdc++ and
to this wheel, so `check_frame_layout()` verifies it at start-up. The port's callbacks go further and read a
frame's type, size and data pointer in one ctypes view of the C++ `MediaFrame` (`FrameView`, checked at start-up
too), and hand back audio by assigning a ByteVector of their own (`FrameWriter`): each SWIG attribute access costs
about 1 us and `ByteVector.resize` several, on every frame.

pjmedia's clock thread is not a Python thread, so each upcall's `PyGILState_Ensure` made a new Python thread state
and its `PyGILState_Release` destroyed it again (CPython gh-146219): a memory map, page faults and interpreter setup
twice a tick per call. In a perf profile of 4 echo calls (6 s, one run each) the clock thread used 366 ms against a
bare pjsua2 bridge's 168 ms, and 204 ms with the state kept. `pin_thread_state()` keeps one outer
`PyGILState_Ensure` outstanding for the thread's life, the pattern CPython's documentation gives for foreign threads
that call in repeatedly; the endpoint keeps the sound device's clock (and so that thread) for the life of the
process (`sndAutoCloseTime = -1`).
"""

from __future__ import annotations

import ctypes
import threading
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


class FrameView(ctypes.Structure):
    """pjsua2's `MediaFrame` as this wheel lays it out: `type`, `buf` (a std::vector: data, end, capacity), `size`."""

    _fields_ = [("type", ctypes.c_int), ("data", ctypes.c_void_p), ("end", ctypes.c_void_p),
                ("capacity", ctypes.c_void_p), ("size", ctypes.c_uint)]


def read_frame(frame: Any) -> bytes | None:
    """The audio of a received `MediaFrame` when it holds one whole frame, else None."""
    v = FrameView.from_address(int(frame.this))
    if v.type != _AUDIO or v.size != FRAME_BYTES or (v.end or 0) - (v.data or 0) < FRAME_BYTES:
        return None
    return ctypes.string_at(v.data, FRAME_BYTES)


class FrameWriter:
    """Fills requested `MediaFrame`s from a ByteVector of its own (one per port: the clock thread's alone)."""

    _silent = pj.ByteVector(SILENCE)

    def __init__(self) -> None:
        self._vec = pj.ByteVector(SILENCE)
        self._data = _data_ptr(self._vec)

    def write(self, frame: Any, pcm: bytes) -> None:
        """`pcm` (one whole frame) as the audio of `frame`."""
        if pcm is SILENCE:
            frame.buf = self._silent
        elif len(pcm) == FRAME_BYTES:
            ctypes.memmove(self._data, pcm, FRAME_BYTES)
            frame.buf = self._vec
        else:
            raise ValueError(f"outbound frame of {len(pcm)} bytes, not {FRAME_BYTES}")
        v = FrameView.from_address(int(frame.this))
        v.type = _AUDIO
        v.size = FRAME_BYTES


_pinned: set[int] = set()


def pin_thread_state() -> None:
    """Keep the calling thread's Python thread state until the thread ends (for pjmedia's threads, which call into
    Python every 20 ms); once per thread, then a set lookup."""
    ident = threading.get_ident()
    if ident not in _pinned:
        _pinned.add(ident)
        ctypes.pythonapi.PyGILState_Ensure()  # an outer Ensure never released: the upcalls' own pairs nest in it


def check_frame_layout() -> None:
    """Fail clearly if ByteVector's or MediaFrame's memory layout is not what the frame access here assumes."""
    probe = bytes(range(256)) * 3
    vec = pj.ByteVector(probe)
    if read_buf(vec, len(probe)) != probe:
        raise PjsuaBuildError("pjsua2 ByteVector layout is not libstdc++'s std::vector: frame reads would be wrong")
    out = pj.ByteVector()
    write_buf(out, probe[::-1])
    if out.size() != len(probe) or read_buf(out, len(probe)) != probe[::-1]:
        raise PjsuaBuildError("pjsua2 ByteVector cannot be written through its data pointer")
    pcm = probe[:FRAME_BYTES]
    rx = pj.MediaFrame()
    rx.type, rx.buf, rx.size = _AUDIO, pj.ByteVector(pcm), FRAME_BYTES
    tx = pj.MediaFrame()
    FrameWriter().write(tx, pcm)
    if read_frame(rx) != pcm or tx.type != _AUDIO or tx.size != FRAME_BYTES or read_buf(tx.buf, FRAME_BYTES) != pcm:
        raise PjsuaBuildError("pjsua2 MediaFrame layout is not (type, ByteVector buf, size): frames would be wrong")


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
        self._writer = FrameWriter()

    def onFrameReceived(self, frame: Any) -> None:  # noqa: N802 (pjsua2's name)
        try:
            pin_thread_state()
            media = self.media
            if media is not None:
                pcm = read_frame(frame)
                if pcm is not None:
                    media.on_inbound(time.monotonic(), pcm)
        except Exception as e:  # never let an exception cross into pjmedia's clock thread
            self._report(e)

    def onFrameRequested(self, frame: Any) -> None:  # noqa: N802
        try:
            pin_thread_state()
            media = self.media
            self._writer.write(frame, media.next_outbound(time.monotonic()) if media is not None else SILENCE)
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
