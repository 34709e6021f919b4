"""Backchannels told by their words: the pure judge (agents/backchannel.py), and the media core acting on its
verdicts on recorded speech with exact timestamps (a pause resumed by words past `confirm_ms`, a barge-in confirmed
by words before it, the duration deciding when no words come)."""

from __future__ import annotations

import numpy as np
import pytest

from agents.backchannel import BackchannelJudge, BackchannelSettings, is_backchannel, words_of
from media.events import BargeInConfirmed, BargeInPaused, BargeInResumed, PlayoutFinished, PlayoutFlushed
from media.frames import FRAME_MS
from media.pipeline import CallMedia
from telephony.config import ConfigError, parse_config
from tests.unit.sim import simulate

PHRASES = [words_of(w) for w in BackchannelSettings().words]


@pytest.mark.parametrize("text", ["Uh-huh.", "uh huh", "Mm-hmm", "Yeah, okay.", "okay okay sure", "Right.", "I see",
                                  "'Yeah.'", "all right, got it"])
def test_only_backchannel_words_are_a_backchannel(text):
    assert is_backchannel(text, PHRASES) is True


@pytest.mark.parametrize("text", ["Yeah, but I need help.", "wait", "No.", "see", "okay so listen", "sure thing"])
def test_any_other_word_is_not(text):
    assert is_backchannel(text, PHRASES) is False


def test_no_words_is_no_verdict():
    assert is_backchannel(" ... ", PHRASES) is None


def test_a_configured_list_replaces_the_default():
    phrases = [words_of(w) for w in ("haan", "accha", "theek hai")]
    assert is_backchannel("Theek hai, accha.", phrases) is True
    assert is_backchannel("yeah", phrases) is False


def frames(judge: BackchannelJudge, start: float, n: int, paused: bool, turn: int) -> list[float]:
    """Feed `n` frames from `start`; the times at which the judge asked for the burst's first words."""
    return [start + k * 0.02 for k in range(n) if judge.frame(start + k * 0.02, paused, turn)]


def test_the_judge_asks_for_the_first_words_after_first_words_ms_once_per_pause():
    j = BackchannelJudge(BackchannelSettings(first_words_ms=300))
    assert frames(j, 10.0, 5, False, 1) == []
    asked = frames(j, 10.1, 40, True, 1)
    assert asked == [pytest.approx(10.4)]


def test_backchannel_words_resume_once_then_other_words_confirm():
    j = BackchannelJudge()
    frames(j, 5.0, 3, True, 2)
    assert j.words("Yeah", 5.3, 2) == "backchannel"
    assert j.words("Yeah, okay", 5.6, 2) is None  # already resumed
    assert j.words("Yeah, okay, but wait", 5.9, 2) == "interruption"
    assert j.words("Yeah, okay, but wait.", 6.0, 2) is None  # confirmed: nothing left to decide


def test_other_words_confirm_at_once():
    j = BackchannelJudge()
    frames(j, 5.0, 3, True, 2)
    assert j.words("", 5.3, 2) is None
    assert j.words("Stop", 5.3, 2) == "interruption"


def test_transcripts_of_other_turns_or_of_audio_before_the_pause_are_not_judged():
    j = BackchannelJudge()
    assert j.words("Stop", 1.0, 1) is None  # no pause yet
    frames(j, 5.0, 3, True, 2)
    assert j.words("Stop", 4.9, 2) is None  # audio up to before the pause
    assert j.words("So?", 5.2, 2) is None  # under first_words_ms of it: a syllable
    assert j.words("Stop", 5.5, 1) is None  # an earlier turn
    frames(j, 8.0, 3, False, 3)
    assert j.words("Stop", 8.5, 3) is None  # a later turn that paused nothing


def test_a_new_pause_in_the_same_turn_is_judged_again():
    j = BackchannelJudge()
    frames(j, 5.0, 3, True, 2)
    assert j.words("uh-huh", 5.3, 2) == "backchannel"
    frames(j, 5.4, 3, False, 2)
    frames(j, 6.0, 3, True, 2)
    assert j.words("uh-huh, mm-hmm", 6.3, 2) == "backchannel"


def _verdict_at(at_s: float, backchannel: bool):
    done: list[bool] = []

    def after(t: float, media: CallMedia, frame: bytes) -> None:
        if t >= at_s and not done:
            done.append(True)
            media.decide(t, backchannel)

    return after


def test_a_pause_past_confirm_ms_is_held_for_words_and_a_backchannel_resumes_it_where_it_stopped(clips):
    # the caller's 2.4 s sentence stands for a long burst here: only the verdict, not the audio, says what it was
    seconds = len(clips.agent) / 16000 + 4
    r = simulate(clips.agent, clips.caller, caller_at_s=2.0, seconds=seconds, words_wait_ms=800,
                 after_frame=_verdict_at(3.0, True))
    paused = r.first(BargeInPaused)
    assert paused is not None and paused.t < 2.3
    assert r.count(BargeInConfirmed) == 0
    resumed = [e for e in r.events if isinstance(e, BargeInResumed)]
    assert resumed and resumed[0].by == "words" and resumed[0].t == pytest.approx(3.0, abs=0.021)
    assert resumed[0].paused_ms > 600  # longer than confirm_ms, which alone would have cancelled the reply
    done = r.first(PlayoutFinished)
    agent_frames = int(np.ceil(len(clips.agent) / 320))
    assert done is not None and done.played_ms == agent_frames * FRAME_MS
    assert len([f for f in r.sent if f != bytes(640)]) == agent_frames  # nothing skipped, nothing twice


def test_words_that_are_no_backchannel_confirm_before_confirm_ms(clips):
    r = simulate(clips.agent, clips.caller, caller_at_s=2.0, seconds=4.0, words_wait_ms=800,
                 after_frame=_verdict_at(2.35, False))
    confirmed = r.first(BargeInConfirmed)
    assert isinstance(confirmed, BargeInConfirmed) and confirmed.by == "words"
    assert (confirmed.t - confirmed.onset_t) * 1000 < 600
    assert r.first(PlayoutFlushed) is not None


def test_without_words_the_duration_confirms_after_the_wait(clips):
    plain = simulate(clips.agent, clips.caller, caller_at_s=2.0, seconds=5.0).first(BargeInConfirmed)
    held = simulate(clips.agent, clips.caller, caller_at_s=2.0, seconds=5.0, words_wait_ms=400).first(BargeInConfirmed)
    assert isinstance(plain, BargeInConfirmed) and isinstance(held, BargeInConfirmed)
    assert held.by == plain.by == "duration"
    assert held.t - plain.t == pytest.approx(0.4, abs=0.021)


def test_a_short_interruption_resumed_by_its_duration_is_confirmed_by_its_words(clips):
    """"No." is over before `confirm_ms`: the duration resumes the pause; its words, a moment later, cut the reply."""
    bc = clips.backchannels["okay"]  # any word under 0.6 s: the verdict says what it was
    r = simulate(clips.agent, bc, caller_at_s=2.0, seconds=4.0, words_wait_ms=800,
                 after_frame=_verdict_at(2.9, False))
    resumed = r.first(BargeInResumed)
    confirmed = r.first(BargeInConfirmed)
    assert isinstance(resumed, BargeInResumed) and resumed.by == "duration" and resumed.t < 2.9
    assert isinstance(confirmed, BargeInConfirmed) and confirmed.by == "words"
    assert r.first(PlayoutFlushed) is not None


def test_a_verdict_with_nothing_left_to_cut_does_nothing(clips):
    r = simulate(np.zeros(0), clips.caller, caller_at_s=0.5, seconds=2.0, words_wait_ms=800,
                 after_frame=_verdict_at(1.0, False))
    assert r.count(BargeInConfirmed) == 0 and r.count(BargeInResumed) == 0


def test_without_confirm_early_words_confirm_when_the_burst_reaches_confirm_ms(clips):
    early = simulate(clips.agent, clips.caller, caller_at_s=2.0, seconds=4.0, words_wait_ms=800,
                     after_frame=_verdict_at(2.35, False)).first(BargeInConfirmed)
    plain = simulate(clips.agent, clips.caller, caller_at_s=2.0, seconds=4.0).first(BargeInConfirmed)
    late = simulate(clips.agent, clips.caller, caller_at_s=2.0, seconds=4.0, words_wait_ms=800,
                    words_confirm_early=False, after_frame=_verdict_at(2.35, False)).first(BargeInConfirmed)
    assert isinstance(early, BargeInConfirmed) and isinstance(plain, BargeInConfirmed)
    assert isinstance(late, BargeInConfirmed) and late.by == "words"
    assert early.t < plain.t and late.t == plain.t  # not before confirm_ms, and not held for more words


def test_without_confirm_early_a_short_burst_resumes_by_its_duration_whatever_its_words(clips):
    r = simulate(clips.agent, clips.backchannels["okay"], caller_at_s=2.0, seconds=4.0, words_wait_ms=800,
                 words_confirm_early=False, after_frame=_verdict_at(2.3, False))
    assert r.count(BargeInConfirmed) == 0
    resumed = r.first(BargeInResumed)
    assert isinstance(resumed, BargeInResumed) and resumed.by == "duration"


def test_without_confirm_early_words_that_resumed_a_pause_may_still_confirm_it(clips):
    verdicts = [_verdict_at(2.3, True), _verdict_at(2.5, False)]
    r = simulate(clips.agent, clips.caller, caller_at_s=2.0, seconds=4.0, words_wait_ms=800, words_confirm_early=False,
                 after_frame=lambda t, media, frame: [v(t, media, frame) for v in verdicts])
    resumed, confirmed = r.first(BargeInResumed), r.first(BargeInConfirmed)
    assert isinstance(resumed, BargeInResumed) and resumed.by == "words"
    assert isinstance(confirmed, BargeInConfirmed) and confirmed.by == "words" and confirmed.t < 2.52


def test_the_agent_config_validates_its_backchannels_with_their_line():
    base = "agents:\n  a:\n    type: cascaded\n    backchannels:\n"
    cfg = parse_config(base + "      words: [haan, theek hai]\n      confirm_early: false\nroutes:\n"
                       "  - {match: '*', agent: a}\n")
    s = cfg.agents["a"].backchannels.settings()  # type: ignore[union-attr]
    assert s.words == ("haan", "theek hai") and not s.confirm_early and s.wait_ms == BackchannelSettings().wait_ms
    with pytest.raises(ConfigError) as e:
        parse_config(base + "      words: [yeah, '...']\n      wait_ms: -5\nroutes:\n  - {match: '*', agent: a}\n",
                     "vg.yaml")
    issues = [str(i) for i in e.value.issues]
    assert any(i.startswith("vg.yaml:5: agents.a.cascaded.backchannels.words") and "no word" in i
               for i in issues), issues
    assert any(i.startswith("vg.yaml:6: agents.a.cascaded.backchannels.wait_ms") for i in issues), issues
