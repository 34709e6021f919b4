"""When voicegate must answer with a `sips:` Contact (RFC 3261 12.1.1).

"If the request that initiated the dialog contained a SIPS URI in the Request-URI or in the top Record-Route header
field value, if there was any, or the Contact header field if there was no Record-Route header field, the Contact
header field in the response MUST be a SIPS URI." pjsua writes a UAS Contact with the scheme of the account that
takes the call (`sips:` only for an account whose `idUri` is `sips:`, and only when the caller's Contact or
Record-Route names a secure transport), so the SIP stack keeps a second, `sips:` account on the TLS listener and
hands it the requests this rule names (`Endpoint.onSelectAccount`). Every other call, `sip:...;transport=tls`
included, keeps the `sip:` account and its Contact.

Only the scheme of three header values is read, from the raw message pjsua2 gives Python; the header block is
parsed by the standard library's `email` parser as in sip_headers.py.
"""

from __future__ import annotations

from telephony.sip_headers import first_header, request_parts


def _scheme(value: str) -> str:
    """The URI scheme of a name-addr or addr-spec header value, in lower case ("" if none)."""
    value = value.strip()
    if value.startswith('"'):  # a quoted display name may hold anything, "<" and ":" too
        value = value[1:].replace('\\"', "").split('"', 1)[-1]
    if "<" in value:
        value = value.split("<", 1)[1]
    return value.split(":", 1)[0].strip().lower() if ":" in value else ""


def needs_sips_contact(message: str) -> bool:
    """Whether the answer to this dialog-creating request must carry a `sips:` Contact (RFC 3261 12.1.1)."""
    if _scheme(request_parts(message)[0]) == "sips":
        return True
    route = first_header(message, "Record-Route")
    return _scheme(route or first_header(message, "Contact", "m")) == "sips"
