from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from tests import audio

ASR_HEAVY = ("test_cascaded.py", "test_cascaded_asr.py", "test_cascaded_services.py")
"""Test files whose gateways each run a speech recognition worker: on 2 cores, three of them at once backed the
ASR up by seconds and failed the word error rate and timing checks, so `make test` runs them one after another."""


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """With `--dist loadfile`, the ASR_HEAVY files share one scope (one worker, in turn); others go file by file."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = str(super()._split_scope(nodeid))
            return "asr-heavy" if scope.rsplit("/", 1)[-1] in ASR_HEAVY else scope

    return Scheduling(config, log)


@dataclass(frozen=True)
class Clips:
    agent: np.ndarray
    caller: np.ndarray
    backchannels: dict[str, np.ndarray]


@pytest.fixture(scope="session")
def clips() -> Clips:
    agent = audio.scale_to_db(audio.trim(audio.piper_steady(audio.AGENT_PROMPT)), -20.0)
    caller = audio.scale_to_db(audio.telephone_band(audio.trim(audio.espeak(audio.CALLER_SENTENCE))), -23.0)
    bcs = {
        b: audio.scale_to_db(audio.telephone_band(audio.trim(audio.espeak(b, speed=220))), -23.0)
        for b in audio.BACKCHANNELS
    }
    return Clips(agent, caller, bcs)
