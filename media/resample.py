"""Sample-rate conversion of whole utterances (rendered prompts, WAV files) to the 16 kHz frame rate, with soxr.

Streamed audio (S2S replies, the uplinks) goes through the stateful `media.polyphase` instead: soxr's stream returns
its output in blocks (about 100 ms when fed 20 ms chunks), which delays a reply's first audio. Never resample chunk
by chunk without state: that is what makes other frameworks crackle.
"""

from __future__ import annotations

import numpy as np
import soxr

from media.frames import SAMPLE_RATE


def resample(pcm: bytes, in_rate: int, out_rate: int = SAMPLE_RATE) -> bytes:
    """Resample a whole utterance at once (prompt rendering)."""
    if in_rate == out_rate:
        return pcm
    x = np.frombuffer(pcm, dtype="<i2")
    return bytes(soxr.resample(x, in_rate, out_rate).astype("<i2").tobytes())
