"""PII redaction of transcripts and turn texts before they are logged or stored (pure text in, text out).

Masked: card numbers (13-19 digits that pass the Luhn check, written as digits in any grouping or spoken as
separate digits, "four one one one ..."; the last four are kept), a 3-4 digit code after a "security code" / CVV /
CVC cue, US social security numbers (`123-45-6789`) and e-mail addresses. The Luhn check is python-stdnum's; the
spoken-digit scan is written here because no library reads digit runs out of ASR text.
"""

from __future__ import annotations

import re
from typing import Any

from stdnum import luhn

DIGIT_WORDS = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
               "seven": "7", "eight": "8", "nine": "9"}
_TOKEN = r"(?:\d+|\b(?:" + "|".join(DIGIT_WORDS) + r")\b)"
_SEP = r"[\s,.\-/]*"
_TOKEN_RE = re.compile(_TOKEN, re.IGNORECASE)
_RUN_RE = re.compile(rf"{_TOKEN}(?:{_SEP}{_TOKEN})*", re.IGNORECASE)
_CVV_RE = re.compile(
    rf"\b(?:security\s+code|cvv2?|cvc2?|cv2|card\s+verification(?:\s+(?:code|value|number))?)"
    rf"(?P<gap>\W+(?:(?!{_TOKEN})\w+\W+){{0,3}}?)(?P<code>{_TOKEN}(?:{_SEP}{_TOKEN}){{0,3}})(?!{_SEP}{_TOKEN})",
    re.IGNORECASE)
_SSN_RE = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
_EMAIL_RE = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
CARD_MIN, CARD_MAX = 13, 19


def _digits(token: str) -> str:
    return DIGIT_WORDS.get(token.lower(), token)


def _mask_cards(run: re.Match[str]) -> str:
    """The run with every Luhn-valid 13-19 digit stretch (on token boundaries) masked."""
    text = run.group(0)
    tokens = [(m.start(), m.end(), _digits(m.group(0))) for m in _TOKEN_RE.finditer(text)]
    out: list[str] = []
    done = 0
    i = 0
    while i < len(tokens):
        digits = ""
        for j in range(i, len(tokens)):
            digits += tokens[j][2]
            if len(digits) > CARD_MAX:
                break
            if len(digits) >= CARD_MIN and luhn.is_valid(digits):
                out += [text[done:tokens[i][0]], f"[card ****{digits[-4:]}]"]
                done = tokens[j][1]
                i = j
                break
        i += 1
    return "".join(out) + text[done:]


def _mask_cvv(m: re.Match[str]) -> str:
    code = "".join(_digits(t) for t in _TOKEN_RE.findall(m.group("code")))
    if not 3 <= len(code) <= 4:
        return m.group(0)
    return m.group(0)[: m.start("code") - m.start()] + "[cvv]"


def redact(text: str) -> str:
    """`text` with card numbers, security codes, SSNs and e-mail addresses masked."""
    text = _RUN_RE.sub(_mask_cards, text)
    text = _CVV_RE.sub(_mask_cvv, text)
    text = _SSN_RE.sub("[ssn]", text)
    return _EMAIL_RE.sub("[email]", text)


def redact_fields(value: Any) -> Any:
    """Every string inside `value` (dicts and lists, recursively) redacted; other values as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_fields(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_fields(v) for v in value)
    return value
