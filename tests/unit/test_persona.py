"""The LLM-played caller in the script runner (pure: observations in, actions out) and its prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from telephony.config import ConfigError
from telephony.simulator.persona import (
    GOAL_MARK,
    SILENT,
    Mouth,
    PersonaLine,
    Verdict,
    judge_messages,
    messages,
    parse_line,
    parse_verdict,
)
from telephony.simulator.runner import AskJudge, AskPersona, Heard, ScriptRunner
from telephony.simulator.script import PersonaArgs, load_script
from tests.servers.llm import LlmServer, text_reply
from tests.unit.test_runner import Line, script, speech

PERSONA = {"url": "http://127.0.0.1:9/v1", "model": "m", "role": "a hotel guest", "goal": "learn the opening hours",
           "max_turns": 2, "timeout_s": 1, "silence_s": 0.4}


class PersonaLineFake(Line):
    """The fake wire, the agent talking in each of `talks` in turn, and a fake LLM: each `AskPersona` gets the next
    of `lines` on the following frame, each `AskJudge` the next of `verdicts`."""

    def __init__(self, talks: list[tuple[int, int]], lines: list[PersonaLine], verdicts: list[Verdict] | None = None,
                 **kw) -> None:
        super().__init__(*talks[0], **kw)
        self.talks = talks[1:]
        self.lines = list(lines)
        self.verdicts = list(verdicts or [])
        self.requests: list[AskPersona] = []
        self.judge: list[AskJudge] = []

    def step(self, runner: ScriptRunner) -> list:
        if self.talks and self.frame >= self.talk[1]:
            self.talk = self.talks.pop(0)
        if self.requests and self.lines and runner.asking:
            runner.persona_said(self.lines.pop(0))
        if self.judge and self.verdicts and runner.judging:
            runner.judged(self.verdicts.pop(0))
        actions = super().step(runner)
        self.requests += [a for a in actions if isinstance(a, AskPersona)]
        self.judge += [a for a in actions if isinstance(a, AskJudge)]
        return actions


def said(text: str) -> PersonaLine:
    words, goal = parse_line(text)
    return PersonaLine(words, goal, speech(None) if words else b"", 12.0)


YES = Verdict(True, "Yes.", 8.0)


def run(lines: list[PersonaLine], heard: list[Heard], talks: tuple[tuple[int, int], ...] = ((10, 60), (150, 200)),
        verdicts: tuple[Verdict, ...] = (YES,), **args) -> tuple:
    r = ScriptRunner(script([{"persona": {**PERSONA, **args}}]), speech)
    wire = PersonaLineFake(list(talks), heard=heard, lines=lines, verdicts=list(verdicts))
    for _ in range(2000):
        wire.step(r)
        if r.done:
            break
    assert r.done
    return r.results[0], wire


def test_the_persona_listens_asks_speaks_and_passes_when_its_goal_is_reached():
    res, wire = run([said("When is reception open?"), said(f"Great, thanks. Bye. {GOAL_MARK}")],
                    [Heard("Thanks for calling Harbour Hotel.", 0.9), Heard("Reception is open from seven.", 0.9)])
    assert res.ok and res.message == "goal reached; the judge found it met in the transcript"
    assert res.metrics == {"turns": 2, "llm_ms": 12.0}
    assert res.transcript == ("agent: Thanks for calling Harbour Hotel.\ncaller: When is reception open?\n"
                              "agent: Reception is open from seven.\ncaller: Great, thanks. Bye.")
    first, second = (a.request for a in wire.requests)
    assert first[0]["role"] == "system" and "a hotel guest" in first[0]["content"] and GOAL_MARK in first[0]["content"]
    assert first[1:] == [{"role": "user", "content": "Thanks for calling Harbour Hotel."}]
    assert second[2:] == [{"role": "assistant", "content": "When is reception open?"},
                          {"role": "user", "content": "Reception is open from seven."}]
    assert len(wire.asked) == 2  # one transcription per agent turn
    [judge] = wire.judge  # asked once, after the persona's last line, with the whole transcript
    assert judge.request == judge_messages(PersonaArgs.model_validate(PERSONA), [
        ("agent", "Thanks for calling Harbour Hotel."), ("caller", "When is reception open?"),
        ("agent", "Reception is open from seven."), ("caller", "Great, thanks. Bye.")])
    assert "learn the opening hours" in judge.request[1]["content"] and res.transcript in judge.request[1]["content"]


def test_the_judge_decides_whether_a_goal_the_persona_claims_was_met():
    lines = [said("When is reception open?"), said(f"Great, thanks. Bye. {GOAL_MARK}")]
    heard = [Heard("Thanks for calling Harbour Hotel.", 0.9), Heard("Sorry, I did not get that.", 0.9)]
    res, wire = run(lines, heard, verdicts=(Verdict(False, "No.", 8.0),))
    assert not res.ok and res.message == ("the persona said its goal was reached, but the judge found it not met in "
                                          "the transcript: learn the opening hours")
    res, _ = run(lines, heard, verdicts=(Verdict(False, "Maybe", 8.0, "the judge answered 'Maybe', not yes or no"),))
    assert not res.ok and res.message == "persona judge: the judge answered 'Maybe', not yes or no"
    res, wire = run(lines, heard, verdicts=(), judge=False)  # the persona's word alone
    assert res.ok and res.message == "goal reached" and wire.judge == []
    # an `until` phrase passes without the judge
    res, wire = run([said("Bye then")], [Heard("We are closed, goodbye.", 0.9)], verdicts=(), until=["goodbye"])
    assert res.ok and wire.judge == []


def test_a_silent_agent_is_a_turn_and_the_goal_missed_fails():
    res, wire = run([said("Hello?"), said("Is anyone there?"), said("Hello??")], [], talks=((0, 0),), max_turns=2)
    assert not res.ok and res.message == "goal not reached after 2 lines: learn the opening hours"
    assert res.metrics["turns"] == 2 and len(wire.requests) == 3 and wire.asked == []
    assert wire.requests[0].request[1] == {"role": "user", "content": SILENT}


def test_an_until_phrase_or_an_llm_error_ends_the_step():
    res, _ = run([said("Bye then")], [Heard("We are closed, goodbye.", 0.9)], until=["goodbye"])
    assert res.ok and res.message == "the agent said 'goodbye'" and res.metrics["turns"] == 0
    res, _ = run([PersonaLine("", False, b"", error="LLM endpoint x: HTTP 500: boom")], [Heard("Hello.", 0.9)])
    assert not res.ok and res.message == "persona: LLM endpoint x: HTTP 500: boom"


def test_prompt_and_mark():
    p = PersonaArgs.model_validate(PERSONA)
    assert parse_line(f"Thanks, bye! {GOAL_MARK.lower()}") == ("Thanks, bye!", True)
    assert parse_line("Hello there.") == ("Hello there.", False)
    assert [m["role"] for m in messages(p, [("agent", ""), ("caller", "Hi")])] == ["system", "user", "assistant"]


def test_persona_errors_name_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("VG_PERSONA_KEY", raising=False)
    f = tmp_path / "s.yaml"
    f.write_text("name: p\nsteps:\n  - persona:\n      url: ftp://x\n      model: m\n      role: r\n      goal: g\n"
                 "      api_key_env: VG_PERSONA_KEY\n")
    with pytest.raises(ConfigError) as e:
        load_script(f)
    text = str(e.value)
    assert f"{f}:4: steps.0.Persona.persona.url" in text, text
    assert f"{f}:8: steps.0.Persona.persona.api_key_env" in text, text
    assert "VG_PERSONA_KEY" in text


def test_the_persona_asks_at_temperature_0_with_the_runs_seed():
    p = PersonaArgs.model_validate({**PERSONA, "url": "http://127.0.0.1:1/v1"})
    with LlmServer() as llm:
        llm.script(text_reply(["Hello."]))
        mouth = Mouth(lambda _sp: b"\0\0" * 320, 1234)
        try:
            line = mouth.submit(p.model_copy(update={"url": llm.base_url}), messages(p, [])).result(10)
        finally:
            mouth.close()
        [req] = llm.requests
    assert line.text == "Hello." and not line.error
    assert req.body["seed"] == 1234 and req.body["temperature"] == 0


@pytest.mark.parametrize(("answer", "met"), [("Yes.", True), ("yes, it was", True), ("No", False),
                                             (" NO. The agent never said.", False), ("Probably", None), ("", None)])
def test_verdicts(answer: str, met: bool | None):
    assert parse_verdict(answer) is met


def test_the_judge_asks_the_same_endpoint_at_temperature_0_for_yes_or_no():
    p = PersonaArgs.model_validate(PERSONA)
    turns = [("agent", "Reception is open from seven."), ("caller", "Thanks, bye.")]
    with LlmServer() as llm:
        llm.script(text_reply(["Yes", "."]), text_reply(["I think so"]))
        mouth = Mouth(lambda _sp: b"", 7)
        try:
            local = p.model_copy(update={"url": llm.base_url})
            met, unclear = (mouth.judge(local, judge_messages(p, turns)).result(10) for _ in range(2))
        finally:
            mouth.close()
        req = llm.requests[0]
    assert met.met and met.answer == "Yes." and not met.error
    assert not unclear.met and unclear.error == "the judge answered 'I think so', not yes or no"
    assert req.body["temperature"] == 0 and req.body["seed"] == 7 and req.body["model"] == "m"
    assert "agent: Reception is open from seven.\ncaller: Thanks, bye." in req.body["messages"][1]["content"]
