"""In-band telephony tones are told apart from recorded human speech, both through G.711."""

from __future__ import annotations

import numpy as np
import pytest

from media.frames import level_dbfs
from media.g711 import ulaw_decode, ulaw_encode
from media.resample import resample
from media.tones import ToneDetector
from tests.prompts import prompts, through_g711


def _flags(pcm: bytes) -> list[bool]:
    det = ToneDetector()
    return [det.process(np.frombuffer(pcm[k : k + 640], "<i2"), level_dbfs(pcm[k : k + 640]))
            for k in range(0, len(pcm) - 639, 640)]


@pytest.mark.parametrize("f1,f2", [(697, 1209), (941, 1477), (852, 1633), (350, 440), (440, 480), (1000, 0),
                                   (2100, 0)])
def test_tones_through_g711_are_tones_from_the_second_frame(f1: int, f2: int) -> None:
    t = np.arange(4000) / 8000
    x = 0.25 * np.sin(2 * np.pi * f1 * t) + (0.25 * np.sin(2 * np.pi * f2 * t) if f2 else 0)
    pcm8 = (x * 32767).astype("<i2").tobytes()
    flags = _flags(resample(ulaw_decode(ulaw_encode(pcm8)), 8000))
    assert not flags[0] and all(flags[2:-2])


def test_recorded_speech_is_almost_never_a_tone() -> None:
    flagged = total = 0
    for p in prompts(30):
        pcm = through_g711(p.path)
        flags = _flags(pcm)
        loud = [level_dbfs(pcm[k : k + 640]) > -40 for k in range(0, len(pcm) - 639, 640)]
        flagged += sum(f and v for f, v in zip(flags, loud, strict=True))
        total += sum(loud)
    assert flagged / total < 0.03, f"{flagged} of {total} speech frames taken for tones"
