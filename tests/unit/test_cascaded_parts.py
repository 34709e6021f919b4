"""Pure parts of the cascaded agent: mixed-script replies split per language for their voices."""

from __future__ import annotations

from agents.cascaded import split_by_script


def test_english_text_is_one_segment() -> None:
    assert split_by_script("Your room is ready.") == [("en", "Your room is ready.")]


def test_hindi_and_english_runs_are_voiced_separately() -> None:
    parts = split_by_script("आपका कमरा तैयार है, and breakfast is at seven. धन्यवाद!")
    assert [lang for lang, _ in parts] == ["hi", "en", "hi"]
    assert parts[0][1].startswith("आपका") and "breakfast" in parts[1][1] and parts[2][1].startswith("धन्यवाद")
