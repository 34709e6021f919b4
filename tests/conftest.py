from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from tests import audio


@dataclass(frozen=True)
class Clips:
    agent: np.ndarray
    caller: np.ndarray
    backchannels: dict[str, np.ndarray]


@pytest.fixture(scope="session")
def clips() -> Clips:
    agent = audio.scale_to_db(audio.trim(audio.piper(audio.AGENT_PROMPT)), -20.0)
    caller = audio.scale_to_db(audio.telephone_band(audio.trim(audio.espeak(audio.CALLER_SENTENCE))), -23.0)
    bcs = {
        b: audio.scale_to_db(audio.telephone_band(audio.trim(audio.espeak(b, speed=220))), -23.0)
        for b in audio.BACKCHANNELS
    }
    return Clips(agent, caller, bcs)
