"""PII redaction of transcripts and turn texts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agents.redact import redact, redact_fields


@pytest.mark.parametrize(("text", "want"), [
    ("my card is 4111 1111 1111 1111 thanks", "my card is [card ****1111] thanks"),
    ("4111111111111111", "[card ****1111]"),
    ("number 5500-0000-0000-0004 expires 12/27", "number [card ****0004] expires 12/27"),
    ("it's four one one one one one one one one one one one one one one one.", "it's [card ****1111]."),
    ("Four, one, one, one, 1111 one one one one, 1 1 1 1", "[card ****1111]"),
    ("order 12 4111 1111 1111 1111 9", "order 12 [card ****1111] 9"),  # a card inside a longer run of digits
    ("378282246310005 is amex", "[card ****0005] is amex"),  # 15 digits
    ("the security code is 123", "the security code is [cvv]"),
    ("CVV: seven three nine, thanks", "CVV: [cvv], thanks"),
    ("and the cvc number is 0 4 2 1", "and the cvc number is [cvv]"),
    ("ssn 123-45-6789", "ssn [ssn]"),
    ("write to john.doe+x@example.co.uk please", "write to [email] please"),
])
def test_pii_is_masked(text: str, want: str) -> None:
    assert redact(text) == want


@pytest.mark.parametrize("text", [
    "card number 4111111111111112 fails the Luhn check",
    "call me at 555 123 4567",
    "I want room 12 for 3 nights from the 14th",
    "security code 1234 5678",  # eight digits after the cue are not a security code
    "the security code comes by mail",
    "oh one more thing",
    "my booking reference is AB 1234",
])
def test_other_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_redaction_is_idempotent() -> None:
    once = redact("card 4111 1111 1111 1111 cvv 123")
    assert redact(once) == once == "card [card ****1111] cvv [cvv]"


def test_fields_are_redacted_recursively_and_other_values_kept() -> None:
    turn = {"text": "it is 4111111111111111", "first_audio_ms": 412.5, "heard": ["ok", "cvv 123"],
            "tool": {"args": "ssn 123-45-6789"}, "interrupted": False, "language": None}
    assert redact_fields(turn) == {"text": "it is [card ****1111]", "first_audio_ms": 412.5,
                                   "heard": ["ok", "cvv [cvv]"], "tool": {"args": "ssn [ssn]"},
                                   "interrupted": False, "language": None}


def test_the_session_stores_and_logs_turns_redacted() -> None:
    from agents.session import CallSession
    from media.pipeline import CallMedia

    logged: list[tuple[str, dict[str, Any]]] = []

    async def run() -> CallSession:
        s = CallSession("c", "sip:a@b", "100", None, CallMedia(lambda ev: None), None, None,  # type: ignore[arg-type]
                        lambda name, **f: logged.append((name, f)))
        s.record_turn({"text": "my card is 4111 1111 1111 1111", "reply": "Thanks."})
        return s

    s = asyncio.run(run())
    assert s.record.turns == [{"text": "my card is [card ****1111]", "reply": "Thanks."}]
    assert logged == [("turn", {"call": "c", "text": "my card is [card ****1111]", "reply": "Thanks."})]
