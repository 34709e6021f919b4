"""The S2S conversation kept for replay (agents.s2s_history): spoken order, late transcripts, cut replies."""

from __future__ import annotations

from agents.s2s_history import History, heard_text


def test_turns_keep_the_order_they_began_in_whatever_order_their_text_arrives() -> None:
    h = History([("user", "hello"), ("assistant", "Hi, how can I help?")])
    h.open("assistant", "resp_1")
    h.open("user", "item_2")  # the caller talked over the reply
    h.fill("item_2", " wait, one more thing ")
    h.fill("resp_1", "Our rooms…")
    h.open("user", "item_3")  # never transcribed: left out
    h.fill("unknown", "ignored")
    assert h.messages() == (("user", "hello"), ("assistant", "Hi, how can I help?"), ("assistant", "Our rooms…"),
                            ("user", "wait, one more thing"))


def test_a_cut_reply_keeps_the_words_in_proportion_to_what_was_heard() -> None:
    text = "one two three four five six seven eight"
    assert heard_text(text, 4000, 4000) == text
    assert heard_text(text, 3990, 4000) == text  # within a frame of the end: all of it
    assert heard_text(text, 2000, 4000) == "one two three four…"
    assert heard_text(text, 100, 4000) == ""
    assert heard_text(text, 0, 0) == text
