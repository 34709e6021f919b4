"""G.711 (mu-law, A-law) for transports that carry raw G.711; SIP calls get it from pjmedia.

Numpy table lookups, bit-exact with the ITU-T reference software (G.191 STL `g711.c`: `ulaw_compress`,
`alaw_compress`, `ulaw_expand`, `alaw_expand`), whose rules build the tables once at import: a 256-entry table per
law decodes; the encoding rule is applied to the 14-bit (mu-law) or 13-bit (A-law) input range, and that table is
spread over all 65,536 samples (64 KiB a law) so that encoding is one lookup per sample. Written here because
`audioop` is gone from Python 3.13 and PyPI's one G.711 package (`g711`) has had no release since 2021.
`audioop` agrees on every decode and A-law code, but its mu-law encoder (Sun's `g711.c`) negates a negative sample
where G.191 takes its one's complement, so 508 of the 32,768 negative inputs (-1 to -4 among them, which it codes
as -8, not -0) land one step further from zero there.
Cost per 20 ms frame at 8 kHz (160 samples, bytes in and out; best of 9 runs of 20,000 on this 2-core machine at a
load average of 5.5 from other work): decode 2.1 µs mu-law, 2.4 µs A-law; encode 2.4 µs mu-law, 2.5 µs A-law
(`audioop` in the same run: 0.2 µs mu-law decode, 0.6 µs either encode).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_U8 = npt.NDArray[np.uint8]
_I16 = npt.NDArray[np.int16]


def _bit_length(x: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    """Bit length of each non-negative value (G.191's segment search loops)."""
    n = np.zeros_like(x)
    rest = x.copy()
    while rest.any():
        n += rest != 0
        rest >>= 1
    return n


def _ulaw_encode_table() -> _U8:
    """Code for each 14-bit input (index = sample >> 2 as 14-bit unsigned); negatives take the one's complement."""
    v = np.arange(-8192, 8192, dtype=np.int32)
    absno = np.minimum(np.where(v < 0, ~v, v) + 33, 0x1FFF)
    seg = 1 + _bit_length(absno >> 6)
    code = ((8 - seg) << 4) | (15 - ((absno >> seg) & 0xF))
    code = np.where(v >= 0, code | 0x80, code)
    return np.roll(code.astype(np.uint8), -8192)  # index 0 is v = 0, index 8191 is v = -1 (unsigned wrap)


def _alaw_encode_table() -> _U8:
    """Code for each 13-bit input (index = sample >> 3 as 13-bit unsigned)."""
    v = np.arange(-4096, 4096, dtype=np.int32)
    ix = np.where(v < 0, ~v, v) >> 1  # G.191 shifts the 16-bit sample by 4: 13-bit >> 1
    seg = _bit_length(ix >> 4)  # exponent: 0 for ix < 16, 1 up to 31, one more per doubling
    mant = np.where(seg > 0, (ix >> np.maximum(seg - 1, 0)) - 16, ix)
    code = np.where(seg > 0, mant + (seg << 4), ix)
    code = np.where(v >= 0, code | 0x80, code) ^ 0x55
    return np.roll(code.astype(np.uint8), -4096)


def _ulaw_decode_table() -> _I16:
    c = np.arange(256, dtype=np.int32)
    m = ~c & 0xFF
    exponent, mantissa = (m >> 4) & 7, m & 0xF
    step = 4 << (exponent + 1)
    mag = (0x80 << exponent) + step * mantissa + step // 2 - 4 * 33
    return np.where(c < 0x80, -mag, mag).astype("<i2")


def _alaw_decode_table() -> _I16:
    c = np.arange(256, dtype=np.int32)
    ix = (c ^ 0x55) & 0x7F
    exponent, mant = ix >> 4, ix & 0xF
    mant = np.where(exponent > 0, mant + 16, mant)
    mant = (mant << 4) + 8
    mant = np.where(exponent > 1, mant << np.maximum(exponent - 1, 0), mant)
    return np.where(c > 127, mant, -mant).astype("<i2")


_SAMPLES = np.arange(65536, dtype=np.uint16)  # every 16-bit sample, as unsigned
ULAW_ENCODE = _ulaw_encode_table()[_SAMPLES >> 2]  # indexed by the whole sample: one take per frame
ALAW_ENCODE = _alaw_encode_table()[_SAMPLES >> 3]
ULAW_DECODE, ALAW_DECODE = _ulaw_decode_table(), _alaw_decode_table()


def _samples(pcm: bytes) -> npt.NDArray[np.uint16]:
    if len(pcm) % 2:
        raise ValueError(f"G.711 encode: {len(pcm)} bytes of PCM16 is not a whole number of samples")
    return np.frombuffer(pcm, dtype="<u2")


def ulaw_decode(data: bytes) -> bytes:
    """mu-law bytes -> PCM16 little-endian, same sample rate."""
    return bytes(ULAW_DECODE.take(np.frombuffer(data, dtype=np.uint8)).tobytes())


def ulaw_encode(pcm: bytes) -> bytes:
    """PCM16 little-endian -> mu-law bytes."""
    return bytes(ULAW_ENCODE.take(_samples(pcm)).tobytes())


def alaw_decode(data: bytes) -> bytes:
    """A-law bytes -> PCM16 little-endian."""
    return bytes(ALAW_DECODE.take(np.frombuffer(data, dtype=np.uint8)).tobytes())


def alaw_encode(pcm: bytes) -> bytes:
    """PCM16 little-endian -> A-law bytes."""
    return bytes(ALAW_ENCODE.take(_samples(pcm)).tobytes())
