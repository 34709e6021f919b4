"""asterisk-conf/ stays in step with voicegate's SIP settings (Asterisk itself is not packaged here)."""

from __future__ import annotations

import re
from pathlib import Path

from telephony.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def sections(path: Path) -> list[tuple[str, dict[str, list[str]]]]:
    out: list[tuple[str, dict[str, list[str]]]] = []
    for raw in path.read_text().splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"\[([^\]]+)\]", line)
        if m:
            out.append((m.group(1), {}))
            continue
        assert out, f"{path.name}: option before any section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {raw!r}"
        out[-1][1].setdefault(key.strip().rstrip(">").strip(), []).append(value.strip())
    return out


def test_pjsip_trunk_matches_voicegate_defaults():
    cfg = load_config(ROOT / "voicegate.yaml")
    secs = sections(ROOT / "asterisk-conf" / "pjsip.conf")
    by_type = {(name, opts["type"][0]): opts for name, opts in secs}
    ep = by_type[("voicegate", "endpoint")]
    codecs = {"g722": "G722", "ulaw": "PCMU", "alaw": "PCMA"}
    assert [codecs[c] for c in ep["allow"]] == cfg.media.codecs
    assert ep["dtmf_mode"] == ["rfc4733"]
    aor = by_type[("voicegate", "aor")]
    assert aor["contact"][0].endswith(f":{cfg.sip.port}")
    assert ("voicegate", "identify") in by_type


def test_dialplan_dials_the_voicegate_endpoint():
    secs = dict(sections(ROOT / "asterisk-conf" / "extensions.conf"))
    assert any("PJSIP/${EXTEN:1}@voicegate" in v for v in secs["to-voicegate"]["same"])


def test_audiosocket_context_reaches_the_configured_port_and_agents():
    cfg = load_config(ROOT / "voicegate.yaml")
    au = cfg.transports.audiosocket
    assert au is not None
    secs = dict(sections(ROOT / "asterisk-conf" / "extensions.conf"))
    calls = [re.fullmatch(r"> n,AudioSocket\(([0-9a-f-]{36}),VOICEGATE_HOST:(\d+)\)", v)
             for v in secs["to-voicegate-audiosocket"]["same"] if "AudioSocket" in v]
    assert calls and all(calls), secs["to-voicegate-audiosocket"]
    assert {int(m.group(2)) for m in calls if m} == {au.port}
    agents = [au.uuids.get(m.group(1), au.agent) for m in calls if m]
    assert agents == ["demo", "echo", au.agent], agents
    assert all(a in cfg.agents for a in agents)
