"""Pure parts of the cascaded agent: mixed-script replies split per language for their voices, how long a reply
waits for the caller's pause, and what becomes of a prepared reply when the caller goes on or a later turn ends
first; the turn record's times; when the LLM's first token came (the local chat-completions server)."""

from __future__ import annotations

import asyncio
import time

from agents.brain import LlmBrain, Part, Say, UserTurn
from agents.cascaded import _Reply, _turn_record, commit_wait_ms, split_by_script, voice_runs
from agents.config import TurnConfig
from agents.listener import HeardTurn, reply_fate
from agents.llm import LlmClient, LlmConfig
from agents.speech.asr import Transcript
from tests.servers.llm import LlmServer, text_reply


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


def test_the_turn_record_has_the_llms_first_token_and_the_barge_in_from_the_end_of_speech() -> None:
    heard = HeardTurn(Transcript("Tell me about the rooms.", "en", 0.9, True, 1.2), b"", start=99.0,
                      speech_end=100.0, endpoint_at=100.25, final_at=100.3, passes=3)
    reply = _Reply(sentences=["We have twelve rooms."],
                   marks={"llm_first_token": 100.62, "first_audio": 100.7, "play": 100.71, "barge_in_onset": 101.5,
                          "barge_in": 101.9})
    rec = _turn_record(heard, reply, 100.31, True, ["We have twelve rooms."], 240)
    assert (rec["llm_first_token_ms"], rec["barge_in_onset_ms"], rec["barge_in_ms"]) == (620.0, 1500.0, 1900.0), rec
    assert rec["interrupted"] and rec["commit_wait_ms"] == 240
    quiet = _turn_record(heard, _Reply(marks={"first_audio": 100.7}), 100.31, False, [], 240)
    assert quiet["llm_first_token_ms"] is None and quiet["barge_in_ms"] is None  # the dialog, heard to the end


def test_the_llm_brain_notes_when_the_models_first_token_came() -> None:
    async def go(server: LlmServer) -> tuple[float, float | None, list[Part]]:
        brain = LlmBrain(LlmClient(LlmConfig(server.base_url, "m")), "sys", "hi", "Hmm.", 5.0, "Sorry, error.")
        try:
            t0 = time.monotonic()
            parts = [p async for p in brain.respond(UserTurn("Any rooms free?", "en", 0.9))]
            return t0, brain.first_token_at, parts
        finally:
            await brain.close()

    with LlmServer() as server:
        server.script(text_reply(["Yes, ", "two."], delay_s=0.3))
        t0, first, parts = asyncio.run(go(server))
    assert parts == [Say("Yes, two.")]
    assert first is not None and 0.3 <= first - t0 < 3.0, (t0, first)


def test_a_reply_is_voiced_in_the_language_the_caller_spoke() -> None:
    voices = {"hi": "hi"}
    assert voice_runs("Okay.", None, voices, "joe") == [("joe", "Okay.")]  # the greeting: nobody has spoken yet
    assert voice_runs("Okay.", "en", voices, "joe") == [("joe", "Okay.")]
    assert voice_runs("Okay.", "hi", voices, "joe") == [("hi", "Okay.")]
    assert voice_runs("Okay.", "ta", voices, "joe") == [("joe", "Okay.")]  # a language without a voice


def test_devanagari_keeps_the_hindi_voice_and_runs_of_one_voice_are_joined() -> None:
    text = "आपका कमरा तैयार है, and breakfast is at seven."
    assert voice_runs(text, "en", {"hi": "hi"}, "joe") == [("hi", "आपका कमरा तैयार है,"),
                                                           ("joe", "and breakfast is at seven.")]
    assert voice_runs(text, "hi", {"hi": "hi"}, "joe") == [("hi", "आपका कमरा तैयार है, and breakfast is at seven.")]
    assert voice_runs(text, "en", {"hi": "hi", "en": "en-gb"}, "joe")[1][0] == "en-gb"
