"""Headers an agent may send with a blind transfer so the person who takes the call gets its context: only `X-*`
names and `User-to-User`, carried as headers of the Refer-To URI, which the transferee copies into its INVITE
(RFC 3261 19.1.1, RFC 3515 2.1). A model's tool arguments are checked here; what is refused goes back to the model
as the tool's error. Escaping is `urllib.parse.quote`; only the name rule is ours."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

_NAME = re.compile(r"X-[A-Za-z0-9][A-Za-z0-9.!%*_+`'~-]*|User-to-User", re.IGNORECASE)
MAX_VALUE = 256
"""Characters per header value: context for a person, not a payload (a REFER has to fit a UDP datagram)."""
DESCRIPTION = ("Optional SIP headers for the person taking the call (context such as a case number): only X-* names "
               "and User-to-User.")
OBJECT_SCHEMA: dict[str, Any] = {"type": "object", "description": DESCRIPTION,
                                 "additionalProperties": {"type": "string"}}
"""The `headers` argument of a transfer tool, as an OpenAI (chat or Realtime) JSON schema."""
GEMINI_SCHEMA: dict[str, Any] = {"type": "ARRAY", "description": DESCRIPTION, "items": {
    "type": "OBJECT", "properties": {"name": {"type": "STRING"}, "value": {"type": "STRING"}},
    "required": ["name", "value"]}}
"""The same as a list of name/value pairs: Gemini's schema subset refuses an OBJECT without properties."""


class HeaderError(ValueError):
    """A transfer header the agent may not send (the message is for the model)."""


def transfer_headers(raw: object) -> dict[str, str]:
    """The headers of a tool call's `headers` argument: an object of name to value, or a list of `{name, value}`."""
    if raw is None:
        return {}
    if isinstance(raw, list):
        if not all(isinstance(h, dict) and set(h) == {"name", "value"} for h in raw):
            raise HeaderError("headers must be a list of {name, value} pairs")
        pairs = [(h["name"], h["value"]) for h in raw]
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        raise HeaderError(f"headers must be an object of header name to value, got {type(raw).__name__}")
    out: dict[str, str] = {}
    for name, value in pairs:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise HeaderError(f"header {name!r} may not be sent on a transfer: only X-* names and User-to-User")
        if not isinstance(value, str) or len(value) > MAX_VALUE or any(ord(c) < 32 for c in value):
            raise HeaderError(f"header {name}: the value must be text of at most {MAX_VALUE} characters on one line")
        out[name] = value
    return out


def uri_with_headers(uri: str, headers: Mapping[str, str]) -> str:
    """`uri` with `headers` as URI headers (`?name=value&...`, escaped as RFC 3261 25.1 asks)."""
    if not headers:
        return uri
    safe = "[]/?:+$"
    fields = "&".join(f"{quote(k, safe=safe)}={quote(v, safe=safe)}" for k, v in headers.items())
    return f"{uri}{'&' if '?' in uri else '?'}{fields}"
