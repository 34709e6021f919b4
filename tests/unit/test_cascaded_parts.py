"""Pure parts of the cascaded agent: mixed-script replies split per language for their voices, how long a reply
waits for the caller's pause, and what becomes of a prepared reply when the caller goes on or a later turn ends
first."""

from __future__ import annotations

from agents.cascaded import commit_wait_ms, split_by_script
from agents.config import TurnConfig
from agents.listener import reply_fate
from agents.speech.asr import Transcript


def test_english_text_is_one_segment() -> None:
    assert split_by_script("Your room is ready.") == [("en", "Your room is ready.")]


def test_hindi_and_english_runs_are_voiced_separately() -> None:
    parts = split_by_script("आपका कमरा तैयार है, and breakfast is at seven. धन्यवाद!")
    assert [lang for lang, _ in parts] == ["hi", "en", "hi"]
    assert parts[0][1].startswith("आपका") and "breakfast" in parts[1][1] and parts[2][1].startswith("धन्यवाद")


def test_a_reply_waits_for_the_commit_then_plays() -> None:
    assert reply_fate(3, 3, set(), False, now=10.2, commit_at=10.45) == "wait"
    assert reply_fate(3, 3, set(), False, now=10.45, commit_at=10.45) == "play"


def test_a_reply_waits_while_the_caller_goes_on_and_is_dropped_when_the_longer_turn_ends() -> None:
    assert reply_fate(3, 3, {3}, True, now=11.0, commit_at=10.45) == "wait"
    assert reply_fate(3, 4, {3}, False, now=12.0, commit_at=10.45) == "drop"


def test_a_slow_reply_still_plays_after_the_callers_next_turn_of_its_own() -> None:
    """ASR under load: turn 3's transcript came after turn 4 (not a continuation) had ended."""
    assert reply_fate(3, 4, set(), False, now=14.0, commit_at=10.45) == "play"
    assert reply_fate(3, 5, {4}, False, now=16.0, commit_at=10.45) == "play"  # turn 4 was continued, not 3


def test_a_complete_sentence_is_answered_at_the_endpoint_an_unfinished_one_after_commit_ms() -> None:
    turn = TurnConfig(commit_ms=450, commit_complete_ms=240)
    assert commit_wait_ms(turn, Transcript("What time do you close tonight?", "en", 0.9, True, 1.6)) == 240
    assert commit_wait_ms(turn, Transcript("My number is 0 7 7.", "en", 0.9, True, 1.6)) == 450
    assert commit_wait_ms(turn, Transcript("i want to book a room", "en", 0.9, True, 1.6)) == 450
    assert commit_wait_ms(turn, Transcript("What time do you close tonight?", "en", 0.2, True, 1.6)) == 450
