"""The barge-in detector on recorded speech with exact timestamps (behaviour, not timing of this machine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from media.events import BargeInConfirmed, BargeInPaused, BargeInResumed, PlayoutFinished, PlayoutFlushed
from media.frames import FRAME_MS
from tests import audio, clipset
from tests.unit.sim import simulate, tone

MAX_REACTION_FRAMES = 4  # pinned: caller onset -> last agent frame sent, in 20 ms frames


def test_caller_speech_pauses_at_once_then_cancels(clips):
    r = simulate(clips.agent, clips.caller, caller_at_s=2.0, seconds=5.0)
    paused = r.first(BargeInPaused)
    confirmed = r.first(BargeInConfirmed)
    assert paused is not None and confirmed is not None
    assert r.caller_frame is not None
    last = r.last_agent_frame_after(r.caller_frame)
    assert last - r.caller_frame <= MAX_REACTION_FRAMES, f"agent audio went on {last - r.caller_frame} frames"
    flushed = r.first(PlayoutFlushed)
    heard = [i for i, f in enumerate(r.sent) if f != bytes(640)]
    assert flushed is not None and flushed.played_ms == len(heard) * FRAME_MS
    assert heard == list(range(len(heard))), "agent audio after the pause"
    assert r.count(BargeInResumed) == 0


def test_caller_speech_over_echo_and_noise_still_interrupts(clips):
    r = simulate(clips.agent, clips.caller, echo_db=-12, echo_delay_ms=200, noise_snr_db=30, seconds=5.0)
    assert r.first(BargeInConfirmed) is not None
    assert r.caller_frame is not None
    assert r.last_agent_frame_after(r.caller_frame) - r.caller_frame <= MAX_REACTION_FRAMES


def test_a_callers_first_words_are_never_fitted_to_an_echo_louder_than_the_agent(clips):
    """One of piper's renderings of the agent's prompt (3.5 s, tests/data; 4 of 60 fresh ones did the same): with
    the echo known (200 ms, -12 dB), the caller's first frame, too quiet to join the burst, fitted the second before
    it to a 980 ms delay at +4 dB, so every onset was taken for our own echo until 2.5 s and the bursts left never
    reached `confirm_ms`. The frame before a burst is no context, and an echo comes back attenuated."""
    agent = audio.to_array((Path(__file__).parents[1] / "data" / "agent-prompt-over-echo.pcm").read_bytes())
    r = simulate(agent, clips.caller, echo_db=-12, echo_delay_ms=200, noise_snr_db=30, seconds=5.0)
    assert r.first(BargeInConfirmed) is not None and r.caller_frame is not None
    assert r.last_agent_frame_after(r.caller_frame) - r.caller_frame <= MAX_REACTION_FRAMES


@pytest.mark.parametrize("word", ["uh-huh", "yeah", "okay"])
def test_backchannel_pauses_then_resumes_where_it_stopped(clips, word):
    bc = clips.backchannels[word]
    assert bc.size / 16000 < 0.6
    r = simulate(clips.agent, bc, caller_at_s=2.0, seconds=len(clips.agent) / 16000 + 2)
    assert r.count(BargeInConfirmed) == 0
    assert r.count(BargeInResumed) == r.count(BargeInPaused)
    done = r.first(PlayoutFinished)
    assert done is not None, "playout must finish after resuming"
    # nothing skipped: every agent frame was sent exactly once
    agent_frames = int(np.ceil(len(clips.agent) / 320))
    assert done.played_ms == agent_frames * FRAME_MS
    sent = [f for f in r.sent if f != bytes(640)]
    assert len(sent) == agent_frames


@pytest.mark.parametrize("delay_ms", [20, 100, 250, 500])
def test_own_echo_at_minus_12_db_does_not_stop_the_agent(clips, delay_ms):
    r = simulate(clips.agent, echo_db=-12, echo_delay_ms=delay_ms, noise_snr_db=30, seconds=len(clips.agent) / 16000)
    assert r.count(BargeInPaused) == 0


def test_line_noise_does_not_stop_the_agent(clips):
    r = simulate(clips.agent, noise_snr_db=20, seconds=4.0)
    assert r.count(BargeInPaused) == 0


def test_dtmf_tone_is_not_speech(clips):
    key = np.concatenate([tone((770, 1336), 0.2, -15), np.zeros(1600), tone((852, 1477), 0.2, -15)])
    r = simulate(clips.agent, key, caller_at_s=2.0, seconds=4.0)  # after 2 s only the tone rejector can stop it
    assert r.count(BargeInPaused) == 0


def test_no_agent_audio_means_speech_events_but_no_barge_in(clips):
    r = simulate(np.zeros(0), clips.caller, caller_at_s=0.5, seconds=4.0)
    assert r.count(BargeInPaused) == 0
    assert r.media.detector.in_speech is False  # the utterance ended and was reported


def test_a_quiet_caller_whose_words_fit_our_audio_by_chance_still_barges_in():
    """At -30 dBFS this caller's first words fit what the agent played 340 ms before them (a chance fit an echo
    that starts mid-call would make): the path taken from them is refuted once the caller speaks where it expects
    no echo, and the barge-in is confirmed."""
    caller = audio.scale_to_db(clipset.caller_utterances()[3], -30.0)
    r = simulate(clipset.agent_turns()[1], caller, caller_at_s=1.3, noise_snr_db=30, seconds=6.0, seed=193)
    assert r.first(BargeInConfirmed) is not None


def test_caller_speech_over_a_drifting_echo_on_an_impaired_line_still_interrupts(clips):
    """The echo of an impaired line (delay drifting 250-370 ms, lost frames, -56 dBFS noise) is known over a range of
    lags; a caller talking over it still pauses the agent at once."""
    r = simulate(clips.agent, clips.caller, caller_at_s=2.5, echo_db=-12, echo_delay_ms=250, seconds=5.5,
                 line=clipset.WIRE_IMPAIRED)
    assert r.first(BargeInConfirmed) is not None
    assert r.caller_frame is not None
    assert r.last_agent_frame_after(r.caller_frame) - r.caller_frame <= MAX_REACTION_FRAMES
