"""The sentence splitter that feeds streaming TTS."""

from __future__ import annotations

import pytest

from agents.speech.sentences import SentenceSplitter


def split(text: str, step: int = 1) -> list[str]:
    """Feed `text` in `step`-character deltas, then flush."""
    s = SentenceSplitter()
    out: list[str] = []
    for i in range(0, len(text), step):
        out += s.feed(text[i : i + step])
    return out + s.flush()


@pytest.mark.parametrize("step", [1, 3, 1000])
@pytest.mark.parametrize(
    ("text", "chunks"),
    [
        ("Hello. How are you? Fine!", ["Hello.", "How are you?", "Fine!"]),
        ("It costs 3.5 dollars. OK.", ["It costs 3.5 dollars.", "OK."]),
        ("We have 1,000,000 users. Wow.", ["We have 1,000,000 users.", "Wow."]),
        ("Ask Mr. Smith, e.g. today. Or Dr. J. Doe.", ["Ask Mr. Smith, e.g. today.", "Or Dr. J. Doe."]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("Well... I think so?! Yes.", ["Well...", "I think so?!", "Yes."]),
        ("So do I. Bye.", ["So do I.", "Bye."]),
        ("Options:\n1. Sales\n2. Support", ["Options:", "1. Sales", "2. Support"]),
        ("The total is 42. Anything else?", ["The total is 42.", "Anything else?"]),
        ("no final punctuation", ["no final punctuation"]),
    ],
)
def test_sentences(text, chunks, step):
    assert split(text, step) == chunks


def test_first_clause_comes_early_later_clauses_only_when_long():
    text = (
        "Sure, I can help you with that, let me look at your account, "
        "and while I do, could you tell me the date of your last payment, please?"
    )
    assert split(text) == [
        "Sure, I can help you with that,",
        "let me look at your account, and while I do, could you tell me the date of your last payment,",
        "please?",
    ]


def test_short_clause_is_not_split_and_decimal_waits_for_next_delta():
    s = SentenceSplitter()
    assert s.feed("Yes, it is 3.") == []
    assert s.feed("5 degrees. Then") == ["Yes, it is 3.5 degrees."]
    assert s.flush() == ["Then"]
    assert s.flush() == []


def test_flush_resets_the_first_chunk_rule():
    s = SentenceSplitter()
    assert s.feed("One. ") == ["One."]
    assert s.flush() == []
    assert s.feed("Right then, here is the plan: ") == ["Right then, here is the plan:"]
