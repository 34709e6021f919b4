"""The per-call media port: 16 kHz mono 20 ms frames between pjsua's conference bridge and CallMedia.

Its callbacks run on pjmedia's clock thread for every call, every 20 ms, so they must cost microseconds. The port
is a `pjmedia_port` of our own, made with ctypes and added to the bridge with `pjsua_conf_add_port`; its `put_frame`
and `get_frame` are ctypes callbacks that read and write the bridge's frame buffer in place. pjsua2's
`AudioMediaPort` does the same through a SWIG director, which wraps every frame in a new Python proxy object, looks
the method up by name and copies the audio through a C++ std::vector both ways. On a real clock (8 echo ports looped
to themselves, the null sound device, 2-4 runs each) that cost 39-51 us of clock-thread CPU per port and tick, this
port 18-23 us, and C ports alone 2.4-3.4 us (measured). No library offers a cheaper Python port, so this part is
written by hand, after pjmedia's C headers (pjmedia/port.h, pjmedia/frame.h), whose layout pjsua2 2.x has kept;
`check_frame_layout()` drives a port through the library's own `pjmedia_port_put_frame`/`get_frame` at start-up and
fails clearly if the layout is not the one assumed.

A port in the pool (no call) has no callbacks: the bridge skips a port without `put_frame` instead of handing it a
heart-beat frame every tick (conference.c), an upcall per idle port and tick before.

pjmedia's clock thread is not a Python thread, so each upcall's `PyGILState_Ensure` made a new Python thread state
and its `PyGILState_Release` destroyed it again (CPython gh-146219): a memory map, page faults and interpreter setup
twice a tick per call. In a perf profile of 4 echo calls (6 s, one run each) the clock thread used 366 ms against a
bare pjsua2 bridge's 168 ms, and 204 ms with the state kept. `pin_thread_state()` keeps one outer
`PyGILState_Ensure` outstanding for the thread's life, the pattern CPython's documentation gives for foreign threads
that call in repeatedly; the endpoint keeps the sound device's clock (and so that thread) for the life of the
process (`sndAutoCloseTime = -1`).

`read_buf`, `write_buf` and `audio_format` serve the simulator's phone, which keeps pjsua2's `AudioMediaPort`.
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any

import pjsua2 as pj

from media.frames import FRAME_BYTES, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, SILENCE
from media.pipeline import CallMedia
from telephony.errors import PjsuaBuildError, VoicegateError
from telephony.logs import event
from telephony.pjsua_c import lib as _lib

_AUDIO = int(pj.PJMEDIA_FRAME_TYPE_AUDIO)
_FRAME_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_DESTROY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_INFO_BYTES = 64
"""sizeof(pjmedia_port_info): pj_str_t name, signature, direction, pjmedia_format (id, type, detail type, a
24-byte detail union), padded to 8."""
_SIGNATURE = 0x56474D50  # PJMEDIA_SIGNATURE('V','G','M','P'), ours
_SENTINEL = 0x5A5A5A5A  # in port_data, which pjmedia_port_info_init must not touch


class _PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t)]


class _Port(ctypes.Structure):
    """`pjmedia_port`; its `pjmedia_port_info` is filled by `pjmedia_port_info_init` and otherwise opaque here."""

    _fields_ = [("info", ctypes.c_ubyte * _INFO_BYTES), ("pdata", ctypes.c_void_p), ("ldata", ctypes.c_long),
                ("grp_lock", ctypes.c_void_p), ("get_clock_src", ctypes.c_void_p), ("put_frame", _FRAME_CB),
                ("get_frame", _FRAME_CB), ("on_destroy", _DESTROY_CB)]


class PjFrame(ctypes.Structure):
    """`pjmedia_frame`: type, buffer, size in bytes, timestamp, bit info."""

    _fields_ = [("type", ctypes.c_int), ("buf", ctypes.c_void_p), ("size", ctypes.c_size_t),
                ("timestamp", ctypes.c_uint64), ("bit_info", ctypes.c_uint32)]


_lib.pjmedia_port_info_init.argtypes = [ctypes.c_void_p, ctypes.POINTER(_PjStr), ctypes.c_uint, ctypes.c_uint,
                                        ctypes.c_uint, ctypes.c_uint, ctypes.c_uint]
_lib.pjmedia_port_put_frame.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_lib.pjmedia_port_get_frame.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_lib.pjsua_pool_create.restype = ctypes.c_void_p
_lib.pjsua_pool_create.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t]
_lib.pjsua_conf_add_port.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
_lib.pjsua_conf_connect.argtypes = [ctypes.c_int, ctypes.c_int]
_lib.pjsua_conf_disconnect.argtypes = [ctypes.c_int, ctypes.c_int]
_NO_FRAME_CB = _FRAME_CB()  # a NULL function pointer
_frame_at = PjFrame.from_address
_string_at = ctypes.string_at
_memmove = ctypes.memmove
_monotonic = time.monotonic


def _destroyed(_port: int | None) -> int:
    return 0  # the memory is the CallMediaPort's; pjmedia only asks that a port with a group lock has this


_on_destroy = _DESTROY_CB(_destroyed)


class MediaPortError(VoicegateError):
    """pjsua's conference bridge refused an operation on a call's media port."""


def _data_ptr(vec: Any) -> int:
    return ctypes.c_void_p.from_address(int(vec.this)).value or 0


def read_buf(vec: Any, size: int) -> bytes:
    """The first `size` bytes of a pjsua2 ByteVector, without SWIG's per-element copy."""
    return ctypes.string_at(_data_ptr(vec), size)


def write_buf(vec: Any, data: bytes) -> None:
    vec.resize(len(data))
    ctypes.memmove(_data_ptr(vec), data, len(data))


_pinned: set[int] = set()


def pin_thread_state() -> None:
    """Keep the calling thread's Python thread state until the thread ends (for pjmedia's threads, which call into
    Python every 20 ms); once per thread, then a set lookup."""
    ident = threading.get_ident()
    if ident not in _pinned:
        _pinned.add(ident)
        ctypes.pythonapi.PyGILState_Ensure()  # an outer Ensure never released: the upcalls' own pairs nest in it


class CallMediaPort:
    """One slot of our own on the conference bridge, for one call's CallMedia at a time (`media` None: idle).

    Made, attached and detached on the pjsua thread; the callbacks run on the clock thread. A port is never
    freed while the media clock runs (the bridge keeps its address): `PortPool` reuses them.
    """

    def __init__(self, name: str) -> None:
        self.media: CallMedia | None = None
        self.call_id = ""
        self.slot = -1
        self._errors = 0
        self._name = name.encode()
        self._put = _FRAME_CB(self._on_put)
        self._get = _FRAME_CB(self._on_get)
        self.struct = _Port(pdata=_SENTINEL, ldata=_SENTINEL, on_destroy=_on_destroy)
        _lib.pjmedia_port_info_init(ctypes.byref(self.struct), _PjStr(self._name, len(self._name)), _SIGNATURE,
                                    SAMPLE_RATE, 1, 16, FRAME_SAMPLES)

    def register(self, pool: int) -> None:
        """Add the port to pjsua's conference bridge (pjsua thread; once)."""
        slot = ctypes.c_int(-1)
        status = _lib.pjsua_conf_add_port(pool, ctypes.byref(self.struct), ctypes.byref(slot))
        if status != 0:
            raise MediaPortError(f"pjsua_conf_add_port({self._name.decode()}) failed with status {status}")
        self.slot = slot.value

    def attach(self, media: CallMedia, call_id: str) -> None:
        self.call_id = call_id
        self._errors = 0
        self.media = media
        self.struct.put_frame = self._put
        self.struct.get_frame = self._get

    def detach(self) -> None:
        self.struct.put_frame = _NO_FRAME_CB  # the bridge's next tick skips the port
        self.struct.get_frame = _NO_FRAME_CB
        self.media = None

    def connect(self, call_slot: int) -> None:
        """Both directions between the call's conference slot and this port."""
        for src, dst in ((call_slot, self.slot), (self.slot, call_slot)):
            status = _lib.pjsua_conf_connect(src, dst)
            if status != 0:
                raise MediaPortError(f"pjsua_conf_connect({src}, {dst}) for call {self.call_id} failed with "
                                     f"status {status}")

    def disconnect(self, call_slot: int) -> None:
        """Undo `connect`; a slot pjsua has already removed (the call's stream is gone) is not an error."""
        _lib.pjsua_conf_disconnect(call_slot, self.slot)
        _lib.pjsua_conf_disconnect(self.slot, call_slot)

    # -- clock thread -------------------------------------------------------------------------------------
    def _on_put(self, _port: int | None, frame: int | None) -> int:
        """A frame from the call (the bridge's put_frame)."""
        try:
            pin_thread_state()
            media = self.media
            if media is not None and frame:
                f = _frame_at(frame)
                if f.type == _AUDIO and f.size == FRAME_BYTES and f.buf:
                    media.on_inbound(_monotonic(), _string_at(f.buf, FRAME_BYTES))
        except Exception as e:  # never let an exception cross into pjmedia's clock thread
            self._report(e)
        return 0

    def _on_get(self, _port: int | None, frame: int | None) -> int:
        """This tick's frame for the call (the bridge's get_frame), written into the bridge's buffer."""
        try:
            pin_thread_state()
            if not frame:
                return 0
            f = _frame_at(frame)
            media = self.media
            pcm = media.next_outbound(_monotonic()) if media is not None else SILENCE
            if f.size < FRAME_BYTES or not f.buf:
                f.type = 0  # PJMEDIA_FRAME_TYPE_NONE: the bridge asked for less than a frame
                raise ValueError(f"the bridge asked for {f.size} bytes, not {FRAME_BYTES}")
            if len(pcm) != FRAME_BYTES:
                f.type = 0
                raise ValueError(f"outbound frame of {len(pcm)} bytes, not {FRAME_BYTES}")
            _memmove(f.buf, pcm, FRAME_BYTES)
            f.type = _AUDIO
            f.size = FRAME_BYTES
        except Exception as e:
            self._report(e)
        return 0

    def _report(self, e: Exception) -> None:
        self._errors += 1
        if self._errors <= 3:
            event("media_error", call=self.call_id, error=repr(e))


def put_frame(port: CallMediaPort, frame: PjFrame) -> int:
    """Hand `frame` to the port as the bridge does (through pjmedia's `pjmedia_port_put_frame`); pjmedia's status."""
    return int(_lib.pjmedia_port_put_frame(ctypes.byref(port.struct), ctypes.byref(frame)))


def get_frame(port: CallMediaPort, frame: PjFrame) -> int:
    """Ask the port for a frame as the bridge does (`pjmedia_port_get_frame`); pjmedia's status."""
    return int(_lib.pjmedia_port_get_frame(ctypes.byref(port.struct), ctypes.byref(frame)))


def check_frame_layout() -> None:
    """Fail clearly if pjmedia's port and frame structures, or pjsua2's ByteVector (the phone's frames), are not laid
    out as the frame access here assumes: a port is driven through the library's own put_frame/get_frame."""
    probe = bytes(range(256)) * 3
    vec = pj.ByteVector(probe)
    if read_buf(vec, len(probe)) != probe:
        raise PjsuaBuildError("pjsua2 ByteVector layout is not libstdc++'s std::vector: frame reads would be wrong")
    out = pj.ByteVector()
    write_buf(out, probe[::-1])
    if out.size() != len(probe) or read_buf(out, len(probe)) != probe[::-1]:
        raise PjsuaBuildError("pjsua2 ByteVector cannot be written through its data pointer")
    port = CallMediaPort("vg-layout-check")
    info = bytes(port.struct.info)
    rate, channels, usec, bits = (int.from_bytes(info[o : o + 4], "little") for o in (36, 40, 44, 48))
    sentinels = (port.struct.pdata, port.struct.ldata)
    if sentinels != (_SENTINEL, _SENTINEL) or (rate, channels, usec, bits) != (SAMPLE_RATE, 1, FRAME_MS * 1000, 16):
        raise PjsuaBuildError("pjmedia_port_info is not laid out as pjmedia 2.x's port.h: media ports would be wrong")
    media = CallMedia(lambda e: None)
    media.set_loopback(True)
    port.attach(media, "layout-check")
    pcm = probe[:FRAME_BYTES]
    buf = ctypes.create_string_buffer(pcm, FRAME_BYTES)
    rx = PjFrame(type=_AUDIO, buf=ctypes.addressof(buf), size=FRAME_BYTES)
    out_buf = ctypes.create_string_buffer(FRAME_BYTES)
    tx = PjFrame(type=0, buf=ctypes.addressof(out_buf), size=FRAME_BYTES)
    put, get = put_frame(port, rx), get_frame(port, tx)
    port.detach()
    if (put, get, tx.type, tx.size, out_buf.raw) != (0, 0, _AUDIO, FRAME_BYTES, pcm) or port._errors:
        raise PjsuaBuildError("pjmedia_port/pjmedia_frame are not laid out as pjmedia 2.x's headers: frames would be "
                              "wrong")


def audio_format() -> Any:
    fmt = pj.MediaFormatAudio()
    fmt.init(pj.PJMEDIA_FORMAT_PCM, SAMPLE_RATE, 1, FRAME_MS * 1000, 16)
    return fmt


class PortPool:
    """Media ports made once and reused by later calls; pjsua thread only."""

    def __init__(self) -> None:
        self._free: list[CallMediaPort] = []
        self._all: list[CallMediaPort] = []
        self._pool: int | None = None

    def acquire(self, media: CallMedia, call_id: str) -> CallMediaPort:
        if self._free:
            port = self._free.pop()
        else:
            if self._pool is None:  # pjsua's, freed by libDestroy
                self._pool = _lib.pjsua_pool_create(b"vg-ports", 512, 512)
                if not self._pool:
                    raise MediaPortError("pjsua_pool_create failed: out of memory")
            port = CallMediaPort(f"vg-port-{len(self._all)}")
            port.register(self._pool)
            self._all.append(port)
        port.attach(media, call_id)
        return port

    def release(self, port: CallMediaPort) -> None:
        port.detach()
        self._free.append(port)

    def clear(self) -> None:
        """Drop every port: only after libDestroy (the bridge keeps their addresses until then)."""
        self._free.clear()
        self._all.clear()
        self._pool = None
