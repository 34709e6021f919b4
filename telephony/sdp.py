"""Our codec preference in the SDP answer.

pjmedia's negotiator answers with the first codec in the *offerer's* order (PJMEDIA_SDP_NEG_PREFER_REMOTE_CODEC_ORDER
is compiled in), so a caller offering PCMU before G722 would get PCMU even though G722 carries real 16 kHz audio.
pjsua2 lets `onCallSdpCreated` rewrite our SDP before negotiation: this keeps only the best codec (in our order)
that the offer contains, plus telephone-event. Written by hand because it is a few lines of SDP text editing.
"""

from __future__ import annotations

import re

STATIC_PT = {"0": "PCMU/8000", "8": "PCMA/8000", "9": "G722/8000"}
# G.722's RTP clock rate is 8000 in SDP (RFC 3551) although it samples at 16 kHz
SDP_NAMES = {"G722": "G722/8000", "PCMU": "PCMU/8000", "PCMA": "PCMA/8000"}


def _audio_codecs(sdp: str) -> dict[str, str]:
    """Payload type -> `NAME/RATE` (upper case) for the first audio m-line."""
    m = re.search(r"^m=audio \d+ \S+ ([\d ]+)\s*$", sdp, re.M)
    if not m:
        return {}
    rtpmap = {pt: name.upper() for pt, name in re.findall(r"^a=rtpmap:(\d+) ([^/\s]+/\d+)", sdp, re.M)}
    return {pt: rtpmap.get(pt, STATIC_PT.get(pt, "")) for pt in m.group(1).split()}


def prefer_codec(local: str, remote: str, preference: list[str]) -> str:
    """`local` with only the most preferred codec the remote offers (and telephone-event) left in its audio line."""
    offered = set(_audio_codecs(remote).values())
    chosen = next((SDP_NAMES[c] for c in preference if SDP_NAMES.get(c) in offered), None)
    if chosen is None:
        return local
    ours = _audio_codecs(local)
    drop = {pt for pt, name in ours.items() if name != chosen and not name.startswith("TELEPHONE-EVENT/")}
    if not drop or len(drop) == len(ours):
        return local
    out = []
    for line in local.splitlines():
        if line.startswith("m=audio "):
            head, fmts = line.split(" ")[:3], line.split(" ")[3:]
            line = " ".join(head + [f for f in fmts if f not in drop])
        else:
            m = re.match(r"a=(?:rtpmap|fmtp):(\d+) ", line)
            if m and m.group(1) in drop:
                continue
        out.append(line)
    return "\r\n".join(out) + "\r\n"
