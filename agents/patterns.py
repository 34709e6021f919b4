"""Pattern options in configuration: a regular expression, or exact text that may instead be a `/regex/`; both are
compiled when the file loads, so a bad one is an error naming its file, line and list item."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator


def is_regex(pattern: str) -> bool:
    """Whether an exact-or-regex option holds a regular expression (`/.../`)."""
    return len(pattern) > 1 and pattern.startswith("/") and pattern.endswith("/")


def _regex(v: str) -> str:
    try:
        re.compile(v)
    except re.error as e:
        raise ValueError(f"bad regular expression {v!r}: {e}") from None
    return v


def _text_or_regex(v: str) -> str:
    if is_regex(v):
        _regex(v[1:-1])
    return v


Regex = Annotated[str, AfterValidator(_regex)]
"""A regular expression."""
TextOrRegex = Annotated[str, AfterValidator(_text_or_regex)]
"""Exact text, or a regular expression between slashes (`/^\\+44/`)."""
