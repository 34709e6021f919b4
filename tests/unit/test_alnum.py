"""Spoken codes: normalise, CodeFormat, read_back and the multi-turn SpellingSession."""

from __future__ import annotations

import pytest

from agents.alnum import (
    KEYPAD_PROMPT,
    Ask,
    CodeFormat,
    Confirm,
    Done,
    Failed,
    Invalid,
    SpellingSession,
    normalise,
    read_back,
)


@pytest.mark.parametrize(
    ("said", "code"),
    [
        # digits
        ("one two three", "123"),
        ("One, two, three.", "123"),
        ("4 5 6", "456"),
        ("1234", "1234"),
        ("zero nought nil", "000"),
        ("niner", "9"),
        ("oh one two", "012"),
        ("one oh one", "101"),
        ("double oh seven", "007"),
        ("double four", "44"),
        ("triple seven", "777"),
        ("treble two", "222"),
        ("one two three for five", "12345"),
        ("one two to three", "123"),
        # numbers
        ("twenty one", "21"),
        ("twenty-one", "21"),
        ("forty", "40"),
        ("nineteen eighty four", "1984"),
        ("five hundred", "500"),
        ("five hundred and twelve", "512"),
        ("a hundred and five", "105"),
        ("flight 5 hundred", "500"),
        # letters
        ("A B C", "ABC"),
        ("a, b, c", "ABC"),
        ("bee dee ee", "BDE"),
        ("see dee", "CD"),
        ("eff gee aitch", "FGH"),
        ("jay kay el em en", "JKLMN"),
        ("pee queue are ess tee", "PQRST"),
        ("you vee double you ex why zed", "UVWXYZ"),
        ("double u", "W"),
        ("zee", "Z"),
        ("cue", "Q"),
        ("see", "C"),
        ("A B oh", "ABO"),
        ("double B", "BB"),
        # NATO and examples
        ("alpha bravo charlie", "ABC"),
        ("X-ray yankee zulu", "XYZ"),
        ("x ray", "X"),
        ("Juliett Kilo Lima", "JKL"),
        ("A as in apple", "A"),
        ("B for bravo, one two", "B12"),
        ("c like charlie", "C"),
        ("E is for elephant", "E"),
        ("M as in Mike N as in November", "MN"),
        ("N as in Mike", "M"),
        ("A for apple B for bravo 1 2 3", "AB123"),
        ("B for five", "B45"),
        ("O as in Oscar one", "O1"),
        # mixed, fillers and chatter
        ("my code is A B 4 5", "AB45"),
        ("um, it's, uh, bee dee ee", "BDE"),
        ("The code is K L M 4 4 2", "KLM442"),
        ("it's A, double B, 7", "ABB7"),
        ("that's AB12", "AB12"),
        ("ABC123", "ABC123"),
        ("Oh, it's one two three", "123"),
        ("I want to talk to a person", ""),
        ("I see", ""),
        ("thank you", ""),
        ("OK", ""),
        ("yes", ""),
        ("no, it's A D 1 2 3 4", "AD1234"),
        ("AB dash 12", "AB12"),
        ("A dash one two", "A12"),
        ("", ""),
    ],
)
def test_normalise(said: str, code: str) -> None:
    assert normalise(said) == code


@pytest.mark.parametrize(
    ("said", "code"),
    [
        ("AB dash 12", "AB-12"),
        ("AB-12", "AB-12"),
        ("one two slash three", "12/3"),
        ("one space two", "1 2"),
        ("dash A B dash dash C dash", "AB-C"),
    ],
)
def test_normalise_keeps_separators(said: str, code: str) -> None:
    assert normalise(said, keep_separators=True) == code


@pytest.mark.parametrize(
    ("said", "code"), [("one two to three", "1223"), ("one too", "12"), ("one won ate nine", "1189")]
)
def test_lenient_digits(said: str, code: str) -> None:
    assert normalise(said, lenient_digits=True) == code


@pytest.mark.parametrize(
    ("pattern", "code", "fixed"),
    [
        ("LLDDDD", "AB1234", "AB1234"),
        ("LLDDDD", "A81234", "AB1234"),
        ("LLDDDD", "ABO123", "AB0123"),
        ("LLDDDD", "AB12I4", "AB1214"),
        ("LLDDDD", "5B1234", "SB1234"),
        ("LLDDDD", "AB123", None),
        ("LLDDDD", "AB12X4", None),
        ("LL DDDD", "1KL4729", "KL4729"),  # "1. Where is my order? It is KL4729." (ASR, under load)
        ("LLDDDD", "AB1234CD5678", None),  # two windows fit: the format cannot decide
        ("LL DDDD", "AB0S23", "AB0523"),
        ("AAAA", "O0O0", "O0O0"),
        (r"^[A-Z]{2}\d{4}$", "ABO123", "AB0123"),
        (r"^[A-Z]{2}\d{4}$", "AB1234", "AB1234"),
        (r"^[A-Z]{2}\d{4}$", "ABCDEF", None),
        ("^(B0|8O)$", "BO", None),  # two repairs fit: the format cannot decide
    ],
)
def test_format_fix(pattern: str, code: str, fixed: str | None) -> None:
    assert CodeFormat(pattern).fix(code) == fixed


def test_format_shapes() -> None:
    spaced = CodeFormat("LL DDDD")
    assert spaced.template == "LLDDDD" and spaced.groups == (2, 4) and not spaced.digits_only
    assert CodeFormat("DDDDDD").digits_only and not CodeFormat(r"^\d{6}$").digits_only
    assert CodeFormat("LLDDDD").could_continue("AB0") and not CodeFormat("LLDDDD").could_continue("AB12345")
    assert not CodeFormat("LLDDDD").could_continue("AB1X")
    assert CodeFormat(r"^\d+$").could_continue("123")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        CodeFormat("[A-Z")


@pytest.mark.parametrize(
    ("code", "group", "words"),
    [
        ("AB1234", None, "A, B as in Bravo. one, two, three, four"),
        ("123456", None, "one, two, three. four, five, six"),
        ("1234567", None, "one, two, three. four, five, six, seven"),
        ("12345678", None, "one, two, three, four. five, six, seven, eight"),
        ("KLM442", None, "K, L, M as in Mike. four, four, two"),
        ("A1B2C3", None, "A, one, B as in Bravo. two, C as in Charlie, three"),
        ("AB-12", None, "A, B as in Bravo. dash. one, two"),
        ("0", None, "zero"),
        ("HIJK", None, "H, I, J, K"),
        ("1234", 2, "one, two. three, four"),
        ("SW1A2AA", (4, 3), "S as in Sierra, W, one, A. two, A, A"),
        ("AB1234", (2,), "A, B as in Bravo. one, two, three, four"),
        ("ab12", None, "A, B as in Bravo. one, two"),
    ],
)
def test_read_back(code: str, group: int | tuple[int, ...] | None, words: str) -> None:
    assert read_back(code, group) == words


def test_read_back_rejects_empty_groups() -> None:
    with pytest.raises(ValueError):
        read_back("123", 0)


def _session(pattern: str | None = "LLDDDD", **kw: object) -> SpellingSession:
    return SpellingSession("Please spell your booking reference.", CodeFormat(pattern) if pattern else None, **kw)  # type: ignore[arg-type]


def test_spelling_over_turns_then_yes() -> None:
    s = _session()
    assert s.start() == Ask("Please spell your booking reference.")
    assert s.feed_transcript("A B") == Ask("A, B as in Bravo. Go on.")
    ev = s.feed_transcript("one two three four")
    assert ev == Confirm("AB1234", "I have A, B as in Bravo. one, two, three, four. Is that right?")
    assert s.feed_transcript("yes that's right") == Done("AB1234")
    assert s.feed_transcript("anything") == Done("AB1234")


@pytest.mark.parametrize("yes", ["yes", "Yeah.", "correct", "that's right", "exactly", "that's it"])
def test_yes_words(yes: str) -> None:
    s = _session()
    s.feed_transcript("A B 1 2 3 4")
    assert s.feed_transcript(yes) == Done("AB1234")


@pytest.mark.parametrize("no", ["no", "Nope.", "wrong", "that's not right", "that isn't it"])
def test_no_restarts(no: str) -> None:
    s = _session()
    s.feed_transcript("A B 1 2 3 4")
    ev = s.feed_transcript(no)
    assert isinstance(ev, Ask) and "spell it again" in ev.text
    assert s.feed_transcript("A D 1 2 3 4") == Confirm(
        "AD1234", "I have A, D as in Delta. one, two, three, four. Is that right?"
    )


def test_no_with_a_new_spelling_takes_it() -> None:
    s = _session()
    s.feed_transcript("A B 1 2 3 4")
    ev = s.feed_transcript("no, it's A D 1 2 3 4")
    assert isinstance(ev, Confirm) and ev.code == "AD1234"


def test_format_repairs_oh_and_confusions() -> None:
    s = _session()
    assert s.feed_transcript("A B oh") == Ask("A, B as in Bravo, O. Go on.")
    ev = s.feed_transcript("one two three")
    assert isinstance(ev, Confirm) and ev.code == "AB0123"


def test_unclear_confirm_answer_asks_again() -> None:
    s = _session()
    s.feed_transcript("A B 1 2 3 4")
    ev = s.feed_transcript("hmm")
    assert isinstance(ev, Confirm) and ev.code == "AB1234" and "yes or no" in ev.text


@pytest.mark.parametrize("command", ["start again", "clear", "Let me start over.", "scratch that"])
def test_start_again(command: str) -> None:
    s = _session()
    s.feed_transcript("A B 1")
    assert s.feed_transcript(command) == Ask("Okay, let's start again. Please spell your booking reference.")
    ev = s.feed_transcript("C D 5 6 7 8")
    assert isinstance(ev, Confirm) and ev.code == "CD5678"


def test_last_digit_correction() -> None:
    s = _session()
    s.feed_transcript("A B 1 2 3 4")
    ev = s.feed_transcript("no, the last digit is five")
    assert isinstance(ev, Confirm) and ev.code == "AB1235"
    assert s.feed_transcript("yes") == Done("AB1235")


def test_too_long_is_invalid_and_restarts() -> None:
    s = _session()
    ev = s.feed_transcript("A B 1 2 3 4 5")
    assert isinstance(ev, Invalid) and ev.reason == "format" and "spell it again" in ev.text
    ev = s.feed_transcript("A B 1 2 3 4")
    assert isinstance(ev, Confirm) and ev.code == "AB1234"


def test_nothing_heard_is_invalid() -> None:
    s = _session()
    ev = s.feed_transcript("I don't know")
    assert isinstance(ev, Invalid) and ev.reason == "nothing heard"


def test_nothing_new_midway_repeats_progress() -> None:
    s = _session()
    s.feed_transcript("A B")
    assert s.feed_transcript("um") == Ask("A, B as in Bravo. Go on.")


def test_without_format_each_turn_is_read_back_and_more_continues() -> None:
    s = _session(None)
    assert s.feed_transcript("A B C") == Confirm("ABC", "I have A, B as in Bravo, C as in Charlie. Is that right?")
    ev = s.feed_transcript("one two three")
    assert isinstance(ev, Confirm) and ev.code == "ABC123"
    assert s.feed_transcript("yes") == Done("ABC123")


def test_regex_format_that_s_it_ends_a_short_code() -> None:
    s = _session(r"^\d{4,8}$")
    assert s.feed_transcript("one two three") == Ask("one, two, three. Go on.")
    ev = s.feed_transcript("that's it")
    assert isinstance(ev, Invalid) and ev.reason == "format"


def test_letters_give_up_after_max_attempts() -> None:
    s = _session(max_attempts=2)
    s.feed_transcript("A B 1 2 3 4")
    assert isinstance(s.feed_transcript("no"), Ask)
    s.feed_transcript("A B 1 2 3 4")
    assert s.feed_transcript("no") == Failed("Sorry, I could not get the code.")
    assert s.feed_transcript("A B 1 2 3 4") == Failed("Sorry, I could not get the code.")


def test_digits_fall_back_to_keypad() -> None:
    s = _session("DDDDDD", max_attempts=2)
    assert isinstance(s.feed_transcript("one two"), Ask)
    assert isinstance(s.feed_transcript("one two three four five six seven"), Invalid)
    ev = s.feed_transcript("uh")
    assert ev == Ask(f"Let's try the keypad. {KEYPAD_PROMPT}", keypad=True) and s.on_keypad
    assert s.feed_transcript("one two three") == Ask(KEYPAD_PROMPT, keypad=True)
    assert [s.feed_dtmf(d) for d in "12345"] == [None] * 5
    assert s.feed_dtmf("6") == Done("123456")


def test_keypad_star_clears_and_hash_ends() -> None:
    s = _session(r"^\d{4,8}$", keypad=True, max_attempts=1)
    s.feed_transcript("nothing")
    assert s.on_keypad
    for d in "999":
        s.feed_dtmf(d)
    assert s.feed_dtmf("*") == Ask(f"Cleared. {KEYPAD_PROMPT}", keypad=True)
    for d in "1234":
        assert s.feed_dtmf(d) is None
    assert s.feed_dtmf("#") == Done("1234")


def test_keypad_invalid_then_failed() -> None:
    s = _session(r"^\d{4,8}$", keypad=True, max_attempts=1)
    s.feed_transcript("nothing")
    s.feed_dtmf("1")
    assert s.feed_dtmf("#") == Failed("Sorry, I could not get the code.")


def test_keys_while_speaking_then_confirm_by_key() -> None:
    s = _session("DDDD")
    assert s.feed_dtmf("1") is None and s.feed_dtmf("A") is None
    for d in "23":
        s.feed_dtmf(d)
    ev = s.feed_dtmf("4")
    assert isinstance(ev, Confirm) and ev.code == "1234"
    assert s.feed_dtmf("5") is None
    assert s.feed_dtmf("1") == Done("1234")


def test_mixed_speech_and_keys_and_hash_ends() -> None:
    s = _session(None)
    s.feed_dtmf("4")
    s.feed_dtmf("2")
    ev = s.feed_dtmf("#")
    assert isinstance(ev, Confirm) and ev.code == "42"
    assert isinstance(s.feed_dtmf("2"), Ask)  # 2 means no
    assert s.feed_dtmf("*") == Ask("Cleared. Please spell your booking reference.")
