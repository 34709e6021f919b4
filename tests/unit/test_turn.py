"""End-of-turn decisions, driven frame by frame with exact times."""

from __future__ import annotations

import pytest

from agents.turn import (
    TranscribeDue,
    TurnDetector,
    TurnDropped,
    TurnEnded,
    TurnSettings,
    TurnStarted,
    reads_as,
    sounds_unfinished,
)


def drive(det: TurnDetector, pattern: list[tuple[bool, int]], t0: float = 10.0,
          transcripts: dict[int, str] | None = None) -> list[tuple[float, object]]:
    """Feed (speech, n_frames) runs; `transcripts` answers a TranscribeDue at_pause after N frames."""
    out: list[tuple[float, object]] = []
    t = t0
    due: list[tuple[int, float, str]] = []
    i = 0
    for speech, n in pattern:
        for _ in range(n):
            for _when, until, text in [d for d in due if d[0] == i]:
                det.transcript(text, until)
            for ev in det.frame(t, speech):
                out.append((t, ev))
                if isinstance(ev, TranscribeDue) and ev.at_pause and transcripts is not None:
                    delay, text = next(iter(transcripts.items()))
                    due.append((i + delay, ev.until, text))
            t += 0.02
            i += 1
    return out


def ended(events: list[tuple[float, object]]) -> list[TurnEnded]:
    return [e for _, e in events if isinstance(e, TurnEnded)]


def test_finished_sentence_ends_after_the_endpoint_silence() -> None:
    det = TurnDetector()
    ev = drive(det, [(False, 5), (True, 50), (False, 30)], transcripts={2: "what time do you open"})
    assert isinstance(ev[0][1], TurnStarted)
    [end] = ended(ev)
    gap_ms = (end.t - end.speech_end) * 1000
    assert 230 <= gap_ms <= 260, gap_ms
    assert abs(end.speech_end - (10.0 + 55 * 0.02)) < 1e-6


def test_unfinished_words_hold_the_turn() -> None:
    det = TurnDetector()
    ev = drive(det, [(True, 40), (False, 60)], transcripts={2: "my account number is four five"})
    [end] = ended(ev)
    assert (end.t - end.speech_end) * 1000 >= TurnSettings().hold_ms - 1


def test_a_pause_mid_number_does_not_cut_the_caller_off() -> None:
    det = TurnDetector()
    ev = drive(det, [(True, 40), (False, 25), (True, 30), (False, 20)], transcripts={2: "four five six and"})
    assert not ended(ev)  # 500 ms pause after "and": still one turn
    assert det.in_turn


def test_expected_code_waits_longer() -> None:
    det = TurnDetector()
    det.expect_code = True
    ev = drive(det, [(True, 40), (False, 60)], transcripts={2: "yes"})
    [end] = ended(ev)
    assert (end.t - end.speech_end) * 1000 >= TurnSettings().hold_ms - 1


def test_waits_for_the_pause_transcript_until_hold() -> None:
    det = TurnDetector()
    ev = drive(det, [(True, 40), (False, 60)], transcripts={20: "thank you"})  # ASR: 400 ms after the pause
    [end] = ended(ev)
    assert 470 <= (end.t - end.speech_end) * 1000 <= 530


def test_partials_are_requested_while_speech_goes_on() -> None:
    det = TurnDetector()
    ev = drive(det, [(True, 100)])
    partials = [e for _, e in ev if isinstance(e, TranscribeDue) and not e.at_pause]
    assert len(partials) == 3  # every 600 ms of 2 s of speech


def test_a_click_is_not_a_turn() -> None:
    det = TurnDetector()
    ev = drive(det, [(True, 3), (False, 20)])
    assert any(isinstance(e, TurnDropped) for _, e in ev)
    assert not ended(ev) and not det.in_turn


def test_unfinished_phrases() -> None:
    assert sounds_unfinished("my number is")
    assert sounds_unfinished("four five and")
    assert sounds_unfinished("it is 44")
    assert sounds_unfinished("B as in bravo, C")
    assert not sounds_unfinished("what time do you open?")
    assert not sounds_unfinished("thank you")
    assert not sounds_unfinished("")
    assert sounds_unfinished("Press.")  # a lone word that is not an answer: the rest is coming
    assert not sounds_unfinished("Yes.")
    assert sounds_unfinished("what time do you open", confidence=0.3)


@pytest.mark.parametrize(("text", "reading"), [
    # complete: the recogniser's closing punctuation, or an unpunctuated question, answer or thanks
    ("What time do you close tonight?", "complete"),
    ("\"'Can you tell me about your hotel?'", "complete"),  # as moonshine wrote it on a call
    ("I would like to check my booking.", "complete"),
    ("Operator please.", "complete"),
    ("Yes.", "complete"),
    ("no", "complete"),
    ("can I speak to someone", "complete"),
    ("a table for tonight please", "complete"),
    ("thank you", "complete"),
    # unfinished: a code or number being read out, a conjunction, preposition or filler, "my number is"
    ("It is KL4729.", "unfinished"),
    ("my number is", "unfinished"),
    ("My number is 0 7 7.", "unfinished"),
    ("four five and", "unfinished"),
    ("B as in bravo, C", "unfinished"),
    ("double four", "unfinished"),
    ("I want to book a room for", "unfinished"),
    ("I'd like to, um", "unfinished"),
    ("I was wondering if", "unfinished"),
    ("Press.", "unfinished"),
    # open: unpunctuated words that may go on, or nothing heard
    ("i want to book a room", "open"),
    ("", "open"),
])
def test_how_a_transcript_reads_at_its_end(text: str, reading: str) -> None:
    assert reads_as(text) == reading


def test_a_doubtful_transcript_is_not_complete() -> None:
    assert reads_as("What time do you close tonight?", confidence=0.3) == "unfinished"
