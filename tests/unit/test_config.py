from __future__ import annotations

from pathlib import Path

import pytest

from telephony.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
agents:
  e:
    type: echo
routes:
  - match: "*"
    agent: e
"""


def test_shipped_default_config_is_valid():
    cfg = load_config(ROOT / "voicegate.yaml")
    assert cfg.sip.port == 5060 and cfg.sip.transports == ["udp", "tcp"]
    assert cfg.route("anything") == "assistant"
    assert cfg.route("demo") == "demo"
    assert cfg.route("echo") == "echo"


def test_defaults_fill_in():
    cfg = parse_config(MINIMAL)
    assert cfg.media.codecs == ["G722", "PCMU", "PCMA"]
    assert cfg.barge_in.enabled


def test_routes_exact_regex_and_no_match():
    cfg = parse_config(MINIMAL.replace('"*"', '"/^44\\\\d+$/"'))
    assert cfg.route("44123") == "e"
    assert cfg.route("33123") is None


def _issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "vg.yaml")
    return [str(i) for i in e.value.issues]


def test_every_error_is_named_with_its_line():
    text = """\
sip:
  port: 99999
media:
  codecs: [PCMU, OPUS]
agents:
  e:
    type: echo
  s:
    type: scripted
    start: nowhere
    nodes:
      a:
        - say: hi
routes:
  - match: "*"
    agent: missing
"""
    issues = _issues(text)
    assert any(i.startswith("vg.yaml:2: sip.port:") for i in issues), issues
    assert any(i.startswith("vg.yaml:4: media.codecs:") and "OPUS" in i for i in issues), issues
    assert any(i.startswith("vg.yaml:9: agents.s") and "nowhere" in i for i in issues), issues
    assert len(issues) == 3  # the route error shows once the agents are valid


def test_unknown_field_and_unknown_agent_type():
    issues = _issues(MINIMAL.replace("type: echo", "type: echo\n    colour: blue"))
    assert any(":4: agents.e.echo.colour:" in i for i in issues), issues
    issues = _issues(MINIMAL.replace("type: echo", "type: robot"))
    assert any(":3: agents.e:" in i for i in issues), issues


def test_route_to_unknown_agent():
    issues = _issues(MINIMAL.replace("agent: e", "agent: nobody"))
    assert any("unknown agent 'nobody'" in i for i in issues), issues


def test_broken_yaml_names_the_line():
    issues = _issues("agents:\n  e: [unclosed\nroutes: []\n")
    assert len(issues) == 1 and issues[0].startswith("vg.yaml:3: (yaml):"), issues


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(e.value)


def test_a_missing_asr_model_names_the_path_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "agents:\n  a:\n    type: cascaded\n    asr:\n      engine: whisper\n      model_path: /models/nowhere\n"
        "routes:\n  - match: '*'\n    agent: a\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert f"{bad}:6:" in str(e.value) and "/models/nowhere" in str(e.value)


def test_an_unknown_tts_voice_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "agents:\n  a:\n    type: cascaded\n    voices: {hi: hindi-nope}\nroutes:\n  - match: '*'\n    agent: a\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert f"{bad}:4:" in str(e.value) and "hindi-nope" in str(e.value)


def test_spend_caps_name_their_agents_with_the_line() -> None:
    assert _issues(MINIMAL + "spend:\n  nobody:\n    per_call: 1.0\n") == [
        "vg.yaml:8: spend: names unknown agent 'nobody'"]
    issues = _issues(MINIMAL + "spend:\n  e:\n    per_day: 5\n    on_cap: cascade\n    cascade: e\n")
    assert issues == ["vg.yaml:8: spend: e.cascade: 'e' is not a configured cascaded agent"]
    issues = _issues(MINIMAL + "spend:\n  e:\n    per_call: -1\n")
    assert issues and issues[0].startswith("vg.yaml:9: spend.e.per_call:"), issues


def test_the_commit_for_a_complete_sentence_is_no_longer_than_commit_ms() -> None:
    text = ("agents:\n  a:\n    type: cascaded\n    turn:\n      commit_ms: 300\n      commit_complete_ms: 400\n"
            "routes:\n  - match: \"*\"\n    agent: a\n")
    [issue] = _issues(text)
    assert issue.startswith("vg.yaml:") and "commit_complete_ms (400) must not exceed commit_ms (300)" in issue, issue


def test_metrics_listen_address_is_checked_with_its_line():
    text = "agents: {echo: {type: echo}}\nroutes: [{match: '*', agent: echo}]\nmetrics:\n  listen: not-an-ip\n"
    with pytest.raises(ConfigError) as e:
        parse_config(text, "x.yaml")
    [issue] = e.value.issues
    assert (issue.line, issue.field) == (4, "metrics.listen"), issue


def test_recording_codes_are_checked_with_their_line():
    text = ("agents: {echo: {type: echo}}\nroutes:\n  - match: '*'\n    agent: echo\n    recording:\n"
            "      pause_code: '*x'\n      resume_code: '*2'\n")
    with pytest.raises(ConfigError) as e:
        parse_config(text, "x.yaml")
    [issue] = e.value.issues
    assert (issue.line, issue.field) == (6, "routes.0.recording.pause_code") and "DTMF" in issue.message
    with pytest.raises(ConfigError) as e:
        parse_config(text.replace("'*x'", "'*1'").replace("      resume_code: '*2'\n", ""), "x.yaml")
    assert "go together" in e.value.issues[0].message and e.value.issues[0].line == 6
    route = parse_config(text.replace("'*x'", "'*1'")).route_for("123")
    assert route is not None and route.recording is not None and route.recording.pause_code == "*1"


def test_an_announcement_is_text_or_a_mapping_with_a_consent_key():
    base = "agents: {echo: {type: echo}}\nroutes:\n  - match: '*'\n    agent: echo\n"
    route = parse_config(base + "    announcement: This call is recorded.\n").route_for("1")
    assert route is not None and route.announcement is not None
    assert (route.announcement.text, route.announcement.consent_key) == ("This call is recorded.", None)
    with pytest.raises(ConfigError) as e:
        parse_config(base + "    announcement:\n      text: Hi\n      consent_key: '12'\n", "x.yaml")
    [issue] = e.value.issues
    assert (issue.line, issue.field) == (7, "routes.0.announcement.consent_key"), issue


def test_an_early_media_announcement_takes_no_consent_key_named_with_its_line():
    base = "agents: {echo: {type: echo}}\nroutes:\n  - match: '*'\n    agent: echo\n    announcement:\n      text: Hi\n"
    route = parse_config(base + "      early_media: true\n").route_for("1")
    assert route is not None and route.announcement is not None and route.announcement.early_media
    with pytest.raises(ConfigError) as e:
        parse_config(base + "      early_media: true\n      consent_key: '1'\n", "x.yaml")
    [issue] = e.value.issues
    assert (issue.file, issue.line, issue.field) == ("x.yaml", 6, "routes.0.announcement")
    assert "early_media cannot take a consent_key" in issue.message


def test_a_pcap_route_needs_the_sip_trace_named_with_its_line(tmp_path: Path):
    text = "agents: {e: {type: echo}}\nroutes:\n  - {match: a, agent: e}\n  - match: b\n    agent: e\n    pcap: true\n"
    with pytest.raises(ConfigError) as e:
        parse_config(text, "vg.yaml")
    assert str(e.value) == ("vg.yaml:6: routes.1.pcap: needs records.sip_trace: true (the pcap's SIP messages come "
                            "from the SIP trace)")
    (tmp_path / "vg.yaml").write_text(text + "records: {sip_trace: true}\n")
    cfg = load_config(tmp_path / "vg.yaml")
    assert cfg.routes[1].pcap and cfg.records.pcap_path == str(tmp_path.absolute() / "records/pcap")


def test_a_transfer_step_is_blind_unless_attended():
    text = ("agents:\n  x:\n    type: scripted\n    start: a\n    nodes:\n      a:\n"
            "        - {transfer: 'sip:desk@pbx', attended: true}\n        - {transfer: 'sip:desk@pbx'}\n"
            "routes:\n  - {match: '*', agent: x}\n")
    steps = parse_config(text).agents["x"].nodes["a"]  # type: ignore[union-attr]
    assert [s.attended for s in steps] == [True, False]  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as e:  # the target may ring 20 s: a flow that waits less hangs the caller up
        parse_config(text.replace("attended: true", "attended: true, timeout_s: 10"), "x.yaml")
    [issue] = e.value.issues
    assert issue.line == 3 and "timeout_s must be over 20 s" in issue.message, issue


@pytest.mark.parametrize("kind", ["openai_realtime", "gemini_live"])
def test_a_speech_to_speech_fallback_names_a_cascaded_agent_with_the_line(kind: str) -> None:
    s2s = f"  s2s:\n    type: {kind}\n    api_key_env: null\n    fallback: FALLBACK\n"
    text = MINIMAL.replace("routes:", s2s + "routes:")
    assert _issues(text.replace("FALLBACK", "e")) == [
        "vg.yaml:7: agents.s2s.fallback: 'e' is not a configured cascaded agent"]
    ok = parse_config(text.replace("FALLBACK", "desk").replace("routes:", "  desk:\n    type: cascaded\nroutes:"))
    assert ok.agents["s2s"].fallback == "desk"  # type: ignore[union-attr]
