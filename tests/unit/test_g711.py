"""G.711 tables: every code and every 16-bit input against `audioop` (while Python has it) and G.711's own tables."""

from __future__ import annotations

import importlib
import struct
import warnings
from types import ModuleType

import numpy as np
import pytest

from media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

EVERY_SAMPLE = np.arange(-32768, 32768, dtype=np.int32)
EVERY_PCM = EVERY_SAMPLE.astype("<i2").tobytes()
EVERY_CODE = bytes(range(256))


def audioop() -> ModuleType:
    """The C codec of Python up to 3.12 (`audioop-lts` from 3.13): an independent implementation to compare with."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module("audioop")
        except ImportError:
            pytest.skip("no audioop in this Python; the G.711 table values below still check the codec")


def codes(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.uint8)


def test_every_code_decodes_as_audioop_does() -> None:
    ref = audioop()
    assert ulaw_decode(EVERY_CODE) == ref.ulaw2lin(EVERY_CODE, 2)
    assert alaw_decode(EVERY_CODE) == ref.alaw2lin(EVERY_CODE, 2)


def test_every_sample_alaw_encodes_as_audioop_does() -> None:
    assert alaw_encode(EVERY_PCM) == audioop().lin2alaw(EVERY_PCM, 2)


def test_every_sample_ulaw_encodes_as_the_itu_reference_and_audioop_differs_only_on_negative_boundaries() -> None:
    """G.191 codes a negative sample x as the positive ~x with the sign bit cleared; audioop negates x instead."""
    ref = audioop()
    ours = codes(ulaw_encode(EVERY_PCM))
    theirs = codes(ref.lin2ulaw(EVERY_PCM, 2))
    mirrored = codes(ref.lin2ulaw((~EVERY_SAMPLE).astype("<i2").tobytes(), 2)) & 0x7F
    assert np.array_equal(ours, np.where(EVERY_SAMPLE >= 0, theirs, mirrored))
    differ = np.flatnonzero(ours != theirs)
    assert len(differ) == 508 and (EVERY_SAMPLE[differ] < 0).all()
    assert (np.abs(ours[differ].astype(int) - theirs[differ].astype(int)) == 1).all()  # one quantisation step


def sample(code: bytes) -> int:
    return int(struct.unpack("<h", code)[0])


def pcm(v: int) -> bytes:
    return struct.pack("<h", v)


# G.711 Table 2a (mu-law; magnitudes on its 8159 scale, x4 as 16-bit) and Table 1a (A-law; 4096 scale, x8):
# (16-bit input, code, decoded 16-bit value). Inputs on a decision value go to the interval above it.
ULAW_TABLE = [(0, 0xFF, 0), (3, 0xFF, 0), (4, 0xFE, 8), (120, 0xF0, 120), (124, 0xEF, 132), (32767, 0x80, 32124),
              (-4, 0x7F, 0), (-5, 0x7E, -8), (-32768, 0x00, -32124)]
ALAW_TABLE = [(0, 0xD5, 8), (15, 0xD5, 8), (16, 0xD4, 24), (256, 0xC5, 264), (32767, 0xAA, 32256),
              (-1, 0x55, -8), (-17, 0x54, -24), (-32768, 0x2A, -32256)]


@pytest.mark.parametrize(("x", "code", "value"), ULAW_TABLE)
def test_ulaw_matches_the_g711_table(x: int, code: int, value: int) -> None:
    assert ulaw_encode(pcm(x)) == bytes([code])
    assert sample(ulaw_decode(bytes([code]))) == value


@pytest.mark.parametrize(("x", "code", "value"), ALAW_TABLE)
def test_alaw_matches_the_g711_table(x: int, code: int, value: int) -> None:
    assert alaw_encode(pcm(x)) == bytes([code])
    assert sample(alaw_decode(bytes([code]))) == value


def test_decode_then_encode_gives_every_code_back() -> None:
    """Each decoded level lies inside its own interval (0x7F, mu-law -0, comes back as +0: 0xFF)."""
    assert codes(ulaw_encode(ulaw_decode(EVERY_CODE))).tolist() == [0xFF if c == 0x7F else c for c in range(256)]
    assert alaw_encode(alaw_decode(EVERY_CODE)) == EVERY_CODE


def test_odd_pcm_length_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="3 bytes of PCM16"):
        ulaw_encode(b"\x00\x01\x02")
