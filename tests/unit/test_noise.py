"""Line noise for the simulated caller: its level against the caller's speech, its colour, the noise step."""

from __future__ import annotations

import numpy as np

from telephony.simulator.noise import NOMINAL_SPEECH_DBFS, noise, speech_level_dbfs
from telephony.simulator.runner import Observation, ScriptRunner, SetNoise
from telephony.simulator.script import Script


def _tone(seconds: float, dbfs: float) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    return (np.sin(2 * np.pi * 440 * t) * np.sqrt(2) * 32768 * 10 ** (dbfs / 20)).astype("<i2").tobytes()


def _band_db(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / 16000)
    return float(10 * np.log10(spec[(f >= lo) & (f < hi)].sum()))


def test_speech_level_counts_the_active_frames_only():
    quiet = bytes(16000 * 2)  # a second of digital silence between the words does not lower it
    assert abs(speech_level_dbfs([_tone(1.0, -20.0), quiet, _tone(0.5, -20.0)]) - -20.0) < 0.1
    assert speech_level_dbfs([]) == NOMINAL_SPEECH_DBFS


def test_white_and_pink_noise_at_the_level_asked_for():
    white, pink = noise(-50.0, "white", 1, seconds=4), noise(-50.0, "pink", 1, seconds=4)
    for x in (white, pink):
        assert abs(20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)) / 32768) - -50.0) < 0.05
    # per octave, white noise doubles its power; pink noise keeps it about level
    assert 2.0 < _band_db(white, 2000, 4000) - _band_db(white, 1000, 2000) < 4.0
    assert abs(_band_db(pink, 2000, 4000) - _band_db(pink, 1000, 2000)) < 1.0
    assert np.array_equal(noise(-50.0, "white", 1, seconds=1), noise(-50.0, "white", 1, seconds=1))  # seeded


def test_the_noise_step_sends_noise_under_the_callers_speech_level():
    script = Script.model_validate({"name": "t", "steps": [{"say": "x"}, {"noise": {"snr_db": 30}},
                                                           {"noise": "off"}]})
    r = ScriptRunner(script, lambda _sp: _tone(1.0, -18.0))
    o = Observation(0.0, 0, -1, 0, False, 0, 0, True, False, 200)
    r.tick(o)  # the say step speaks ...
    actions = r.tick(Observation(1.0, 50, -1, 0, False, 0, 49, True, False, 200))  # ... and has ended
    on, off = [a for a in actions if isinstance(a, SetNoise)]
    assert on.samples is not None and off.samples is None
    assert abs(20 * np.log10(np.sqrt(np.mean(on.samples.astype(np.float64) ** 2)) / 32768) - -48.0) < 0.1
    assert r.results[1].metrics == {"noise_dbfs": -48.0}
