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


def speech_levels(frames: int, seed: int) -> list[float]:
    """`played_levels` with a syllable's smoothness: each frame's power spread over the next two, as in speech."""
    p = 10 ** (np.asarray(played_levels(frames, seed)) / 10)
    return [float(x) for x in 10 * np.log10(np.convolve(p, np.ones(3) / 3)[:frames] + 1e-12)]


def echo_leg(delays: list[int], echo_db: float = -12.0, noise_db: float = -56.0, seed: int = 2) -> EchoPath:
    """A path fed a leg that returns our audio `echo_db` down after `delays[k]` frames at frame k, over line noise."""
    ep, rng = EchoPath(), np.random.default_rng(seed)
    played = speech_levels(len(delays), seed=seed)
    for k, p in enumerate(played):
        back = played[k - delays[k]] + echo_db if k >= delays[k] else FLOOR_DBFS
        ep.push(p, float(10 * np.log10(10 ** (back / 10) + 10 ** (noise_db / 10))) + rng.normal(0, 0.5), learn=True)
    return ep


def test_an_800_ms_echo_is_found():
    ep = echo_leg([40] * 250)
    assert ep.state == "echo" and ep.lag == 40 and abs(ep.loss_db + 12.0) < 3.0


def test_an_echo_that_has_not_come_back_yet_is_not_found_in_the_line_noise():
    """Until an 800 ms echo returns there is only line noise; the path never takes a lag in it."""
    states = []
    ep, played = EchoPath(), played_levels(250, seed=3)
    rng = np.random.default_rng(3)
    for k, p in enumerate(played):
        back = played[k - 40] - 20.0 if k >= 40 else FLOOR_DBFS
        ep.push(p, max(back, -56.0 + rng.normal(0, 1.0)), learn=True)
        states.append((ep.state, ep.lag))
    assert {lag for state, lag in states if state == "echo"} <= {40}


def test_a_drifting_echo_is_expected_over_the_lags_it_came_back_at():
    """Jitter buffers that grow and shrink move the echo between 10 and 13 frames, a frame every 1.2 s."""
    ep = echo_leg([10 + (k // 60) % 4 for k in range(400)])
    lo, hi = ep.lag_range
    assert ep.state == "echo" and lo <= 11 and hi >= 12 and hi - lo <= ep.s.max_drift_frames


def test_an_onset_is_explained_by_the_echo_before_it_and_a_louder_one_is_not():
    """The path is not known (it learnt nothing: the caller 'spoke' all along), yet the second before a burst
    follows what we played 35 frames before: a burst at the echo's level is ours, one 12 dB over it is a person."""
    played = played_levels(120, seed=4)
    for extra, ours in ((0.0, True), (12.0, False)):
        ep = EchoPath()
        for k, p in enumerate(played):
            back = played[k - 35] - 10.0 if k >= 35 else FLOOR_DBFS
            if k >= 118:
                back = max(played[k - 35], -30.0) - 10.0 + extra
            ep.push(p, max(back, -56.0), learn=False)
        assert ep.state == "unknown"
        assert ep.explains_onset(2, 6.0, None) is ours


def test_an_onset_just_after_the_delay_jumped_is_explained_by_the_half_second_before_it():
    """An impaired line's jitter buffers grew: the echo came back after 10 frames, and from 0.44 s before the burst
    after 30; the second before the burst fits no one delay, its latter half fits the new one."""
    played = speech_levels(200, seed=5)
    ep = EchoPath()
    for k, p in enumerate(played):
        d = 10 if k < 178 else 30
        back = played[k - d] - 10.0 if k < 198 else max(played[k - d], -30.0) - 10.0
        ep.push(p, max(back, -56.0), learn=False)
    assert ep.explains_onset(2, 6.0, None)
    assert not ep._explains(2, 50, 6.0, None)  # the whole second does not fit
