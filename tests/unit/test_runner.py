"""The script runner as a pure state machine: observations in, actions and step results out."""

from __future__ import annotations

import numpy as np

from telephony.simulator.runner import Observation, ScriptRunner, SendDtmf, Speak
from telephony.simulator.script import Script


def script(steps: list[dict]) -> Script:
    return Script.model_validate({"name": "t", "steps": steps})


def speech(_sp) -> bytes:
    t = np.arange(16000) / 16000
    return (np.sin(2 * np.pi * 300 * t) * 8000).astype("<i2").tobytes()  # 1 s, onset at frame 0


class Line:
    """A fake wire: agent audio in frames [talk_from, talk_to), our speech as the runner asks for it."""

    def __init__(self, talk_from: int, talk_to: int) -> None:
        self.talk = (talk_from, talk_to)
        self.frame = 0
        self.queue = 0
        self.speech_start: int | None = None
        self.speech_end: int | None = None
        self.last_audio = -1
        self.run = 0

    def step(self, runner: ScriptRunner) -> list:
        f = self.frame
        if self.talk[0] <= f < self.talk[1]:
            self.last_audio, self.run = f, self.run + 1
        else:
            self.run = 0
        if self.queue:
            self.speech_start = f if self.speech_start is None else self.speech_start
            self.queue -= 1
            if not self.queue:
                self.speech_end = f
        o = Observation(f * 0.02, f, self.last_audio, self.run, self.queue > 0, self.speech_start, self.speech_end,
                        True, False, 200)
        actions = runner.tick(o)
        for a in actions:
            if isinstance(a, Speak):
                self.queue, self.speech_start, self.speech_end = len(a.frames), None, None
        self.frame += 1
        return actions


def drive(runner: ScriptRunner, line: Line, frames: int) -> list:
    out = []
    for _ in range(frames):
        out += line.step(runner)
        if runner.done:
            break
    return out


def test_wait_speech_measures_latency_and_times_out():
    r = ScriptRunner(script([{"wait_speech": {"timeout_s": 5}}]), speech)
    drive(r, Line(30, 100), 200)
    assert r.results[0].ok and r.results[0].metrics["latency_ms"] == 600
    r = ScriptRunner(script([{"wait_speech": {"timeout_s": 1}}, {"dtmf": "1"}]), speech)
    actions = drive(r, Line(500, 600), 200)
    assert [x.ok for x in r.results] == [False, False] and not any(isinstance(a, SendDtmf) for a in actions)


def test_interrupt_reaction_from_the_callers_onset():
    # the agent talks until frame 80; the caller starts speaking at frame 75 (after_ms 1500 from frame 0)
    r = ScriptRunner(script([{"interrupt": {"say": "x", "after_ms": 1500, "expect_stop_ms": 200}}]), speech)
    drive(r, Line(0, 80), 300)
    res = r.results[0]
    assert res.ok, res
    assert res.metrics["reaction_ms"] == (79 - 76 + 1) * 20  # onset at the first sent frame (76)


def test_interrupt_fails_when_the_agent_keeps_talking():
    r = ScriptRunner(script([{"interrupt": {"say": "x", "after_ms": 100, "expect_stop_ms": 100}}]), speech)
    drive(r, Line(0, 1000), 400)
    assert not r.results[0].ok and "did not stop" in r.results[0].message


def test_backchannel_passes_only_if_the_agent_carries_on():
    r = ScriptRunner(script([{"backchannel": {"say": "x", "after_ms": 100, "expect_continue_s": 1}}]), speech)
    drive(r, Line(0, 1000), 400)
    assert r.results[0].ok
    r = ScriptRunner(script([{"backchannel": {"say": "x", "after_ms": 100, "expect_continue_s": 1}}]), speech)
    drive(r, Line(0, 20), 400)
    assert not r.results[0].ok
