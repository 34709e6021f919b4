"""Inbound filters evaluated before the barge-in detector: libspeexdsp's echo canceller and RNNoise (bench only).

Each filter takes the frame we played this tick and the frame that came in (16 kHz float samples, 320 a frame)
and returns the cleaned inbound frame; a new filter per call.
- Speex: libspeexdsp's MDF canceller, with its preprocessor's residual echo suppression linked to it
  (`SPEEX_PREPROCESS_SET_ECHO_STATE`), through ctypes on Debian's `libspeexdsp1`. Written by hand because no wheel
  works: `speexaec` 0.1.3 and `speexdsp` 0.1.1 are source-only (Cython or SWIG, a compiler and libspeexdsp-dev on
  every machine) and `speexaec` does not expose the echo-state link the residual suppressor needs.
- RNNoise: the `librnnoise.so` that the `pyrnnoise` wheel ships (its `rnnoise` module's ctypes handle); RNNoise
  runs at 48 kHz in 10 ms frames, so the frame goes up and back down through the stateful low-delay polyphase
  resampler (media/polyphase.py) that the live path already uses.
"""

from __future__ import annotations

import ctypes
import weakref
from typing import Protocol

import numpy as np

from media.frames import FRAME_SAMPLES, SAMPLE_RATE
from media.polyphase import PolyphaseResampler

SPEEX_ECHO_SET_SAMPLING_RATE = 24
SPEEX_PREPROCESS_SET_ECHO_STATE = 24
SPEEX_LIBRARY = "libspeexdsp.so.1"


class InboundFilter(Protocol):
    def __call__(self, played: np.ndarray, inbound: np.ndarray) -> np.ndarray: ...


def _speexdsp() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(SPEEX_LIBRARY)
    except OSError as e:
        raise RuntimeError(f"{SPEEX_LIBRARY} not found: install Debian's libspeexdsp1 (Makefile APT_PKGS)") from e
    p = ctypes.c_void_p
    short_p = ctypes.POINTER(ctypes.c_int16)
    lib.speex_echo_state_init.argtypes, lib.speex_echo_state_init.restype = [ctypes.c_int, ctypes.c_int], p
    lib.speex_echo_state_destroy.argtypes, lib.speex_echo_state_destroy.restype = [p], None
    lib.speex_echo_ctl.argtypes, lib.speex_echo_ctl.restype = [p, ctypes.c_int, p], ctypes.c_int
    lib.speex_echo_cancellation.argtypes = [p, short_p, short_p, short_p]
    lib.speex_echo_cancellation.restype = None
    lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_preprocess_state_init.restype = p
    lib.speex_preprocess_state_destroy.argtypes, lib.speex_preprocess_state_destroy.restype = [p], None
    lib.speex_preprocess_ctl.argtypes, lib.speex_preprocess_ctl.restype = [p, ctypes.c_int, p], ctypes.c_int
    lib.speex_preprocess_run.argtypes, lib.speex_preprocess_run.restype = [p, short_p], ctypes.c_int
    return lib


def _pcm16(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.round(x), -32768, 32767), dtype=np.int16)


def _destroy_speex(lib: ctypes.CDLL, echo: int, pre: int | None) -> None:
    if pre is not None:  # the preprocessor holds the echo state: it goes first
        lib.speex_preprocess_state_destroy(pre)
    lib.speex_echo_state_destroy(echo)


class SpeexCanceller:
    """libspeexdsp's MDF echo canceller over `tail_ms` of echo path, then its residual echo suppressor."""

    def __init__(self, tail_ms: int = 600, residual: bool = True) -> None:
        self._lib = _speexdsp()
        self._echo = self._lib.speex_echo_state_init(FRAME_SAMPLES, tail_ms * SAMPLE_RATE // 1000)
        if not self._echo:
            raise RuntimeError(f"libspeexdsp could not make an echo canceller with a {tail_ms} ms tail")
        rate = ctypes.c_int(SAMPLE_RATE)
        self._lib.speex_echo_ctl(self._echo, SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(rate))
        self._pre = None
        if residual:
            self._pre = self._lib.speex_preprocess_state_init(FRAME_SAMPLES, SAMPLE_RATE)
            self._lib.speex_preprocess_ctl(self._pre, SPEEX_PREPROCESS_SET_ECHO_STATE, self._echo)
        weakref.finalize(self, _destroy_speex, self._lib, self._echo, self._pre)
        self._out = np.zeros(FRAME_SAMPLES, dtype=np.int16)

    def __call__(self, played: np.ndarray, inbound: np.ndarray) -> np.ndarray:
        short_p = ctypes.POINTER(ctypes.c_int16)
        near, far = _pcm16(inbound), _pcm16(played)
        self._lib.speex_echo_cancellation(self._echo, near.ctypes.data_as(short_p), far.ctypes.data_as(short_p),
                                          self._out.ctypes.data_as(short_p))
        if self._pre is not None:
            self._lib.speex_preprocess_run(self._pre, self._out.ctypes.data_as(short_p))
        return self._out.astype(np.float32)


class RNNoiseSuppressor:
    """RNNoise on the inbound frame (it ignores what we played): 16 kHz -> 48 kHz -> two 10 ms frames -> 16 kHz."""

    def __init__(self) -> None:
        from pyrnnoise import rnnoise  # the wheel's ctypes handle on its bundled librnnoise.so

        self._lib = rnnoise.lib
        self._frame = int(rnnoise.FRAME_SIZE)
        self._rate = int(rnnoise.SAMPLE_RATE)
        self._st = self._lib.rnnoise_create(None)
        weakref.finalize(self, self._lib.rnnoise_destroy, self._st)
        self._up = PolyphaseResampler(SAMPLE_RATE, self._rate)
        self._down = PolyphaseResampler(self._rate, SAMPLE_RATE)
        self._buf = np.zeros(self._frame, dtype=np.float32)

    def __call__(self, played: np.ndarray, inbound: np.ndarray) -> np.ndarray:
        up = np.frombuffer(self._up.process(_pcm16(inbound).tobytes()), dtype="<i2").astype(np.float32)
        ptr = self._buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        for i in range(0, up.size - self._frame + 1, self._frame):  # 320 samples in -> 960 -> two 480s exactly
            self._buf[:] = up[i : i + self._frame]
            self._lib.rnnoise_process_frame(self._st, ptr, ptr)  # returns the frame's speech probability
            up[i : i + self._frame] = self._buf
        return np.frombuffer(self._down.process(_pcm16(up).tobytes()), dtype="<i2").astype(np.float32)


class Chain:
    """Filters in order, each given what we played."""

    def __init__(self, *filters: InboundFilter) -> None:
        self.filters = filters

    def __call__(self, played: np.ndarray, inbound: np.ndarray) -> np.ndarray:
        for f in self.filters:
            inbound = f(played, inbound)
        return inbound
