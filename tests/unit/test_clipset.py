"""The detector's behaviour pinned on the labelled clip set (simulated frames with exact timestamps).

Frame counts in the simulation are deterministic behaviour, not this machine's timing; `make bench` prints the same
evaluation as a table beside other settings.
"""

from __future__ import annotations

import pytest

from tests import clipset


@pytest.fixture(scope="module")
def evaluation() -> clipset.Evaluation:
    return clipset.evaluate()


def test_every_interruption_is_confirmed_quickly(evaluation):
    assert evaluation.missed == 0
    assert max(evaluation.reaction_frames) <= 6, sorted(evaluation.reaction_frames)
    assert sorted(evaluation.reaction_frames)[len(evaluation.reaction_frames) // 2] <= 2


def test_own_echo_never_pauses_the_agent(evaluation):
    assert evaluation.echo_calls == 72
    assert evaluation.echo_false_pauses == 0 and evaluation.echo_false_stops == 0


def test_backchannels_do_not_stop_the_agent(evaluation):
    assert evaluation.backchannel_calls >= 10
    assert evaluation.backchannel_stops <= 1


def test_an_echo_that_starts_mid_call_is_learnt_after_about_one_pause():
    """The line starts returning the agent 3 s into its turn: the path learnt from quiet frames only never saw it
    (every burst was taken for the caller), and paused the agent 571 times in these 72 turns (up to 19 in one)."""
    clips = clipset.mid_call_echo()
    assert len(clips) == 72
    assert not [c for c in clips if c.stops]
    assert sum(c.echo_state == "echo" for c in clips) >= 65  # 67: five 250-490 ms legs were still unlearnt at the end
    pauses = sorted(c.pauses for c in clips)
    assert pauses[len(pauses) // 2] == 1 and sum(pauses) <= 135 and pauses[-1] <= 7, pauses


def test_own_echo_on_the_wire_never_pauses_the_agent():
    """Echo from the agent's first frame, 20-800 ms late, over -56 dBFS line noise, on a clean line and on one whose
    echo delay drifts by up to 120 ms and loses 1% of its frames: before the echo path searched 1 s, looked for a
    drifted echo over the lags it came back at and checked each onset against the second before it, 26 of these
    72 clips paused the agent and 18 stopped it."""
    ev = clipset.evaluate(specs=clipset.wire_echo_specs())
    assert ev.echo_calls == 72
    assert ev.echo_false_pauses == 0 and ev.echo_false_stops == 0
