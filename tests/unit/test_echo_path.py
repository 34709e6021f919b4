"""The echo path estimate on frame levels: a silent leg, an echoing leg, a quiet echoing leg."""

from __future__ import annotations

import numpy as np

from media.echo_path import EchoPath
from media.frames import FLOOR_DBFS


def played_levels(frames: int, seed: int = 0) -> list[float]:
    """Speech-like levels of what the agent sends: words of 5-20 loud frames, gaps of 2-8 silent ones."""
    rng = np.random.default_rng(seed)
    out: list[float] = []
    while len(out) < frames:
        out += list(rng.uniform(-35, -15, int(rng.integers(5, 20)))) + [FLOOR_DBFS] * int(rng.integers(2, 8))
    return out[:frames]


def run(echo_db: float | None, delay_frames: int = 10, frames: int = 150) -> list[str]:
    """Feed a leg that returns our audio `echo_db` down after `delay_frames` (None: digital silence); the state
    after each frame."""
    ep, states = EchoPath(), []
    played = played_levels(frames)
    for k, p in enumerate(played):
        back = played[k - delay_frames] + echo_db if echo_db is not None and k >= delay_frames else FLOOR_DBFS
        ep.push(p, max(back, FLOOR_DBFS), learn=True)
        states.append(ep.state)
    return states


def test_a_silent_leg_has_no_echo_once_our_audio_could_have_come_back():
    states = run(None)
    assert "none" in states
    first = states.index("none")
    assert 40 <= first <= 80, first  # not before 600 ms of it could return; well before the correlation decides
    assert set(states[first:]) == {"none"}


def test_an_echoing_leg_gets_its_delay_and_loss():
    ep = EchoPath()
    played = played_levels(200, seed=1)
    for k, p in enumerate(played):
        ep.push(p, played[k - 10] - 12.0 if k >= 10 else FLOOR_DBFS, learn=True)
    assert ep.state == "echo" and ep.lag == 10 and abs(ep.loss_db + 12.0) < 3.0


def test_a_quiet_echo_is_not_taken_for_silence():
    assert "none" not in run(-30.0)
