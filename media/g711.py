"""G.711 (mu-law, A-law) for transports that carry raw G.711; SIP calls get it from pjmedia.

`audioop` (stdlib up to Python 3.12, the `audioop-lts` package from 3.13) does it in C, bit-exact.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


def ulaw_decode(data: bytes) -> bytes:
    """mu-law bytes -> PCM16 little-endian, same sample rate."""
    return audioop.ulaw2lin(data, 2)


def ulaw_encode(pcm: bytes) -> bytes:
    return audioop.lin2ulaw(pcm, 2)


def alaw_decode(data: bytes) -> bytes:
    return audioop.alaw2lin(data, 2)


def alaw_encode(pcm: bytes) -> bytes:
    return audioop.lin2alaw(pcm, 2)
