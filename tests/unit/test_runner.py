"""The script runner as a pure state machine: observations in, actions and step results out."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from telephony.config import ConfigError
from telephony.simulator.report import CallReport, audio_runs, console, html, junit
from telephony.simulator.runner import Heard, Observation, ScriptRunner, SendDtmf, Speak, StepResult, Transcribe
from telephony.simulator.script import ExpectSpeechArgs, Script, load_script, uses_asr


def script(steps: list[dict]) -> Script:
    return Script.model_validate({"name": "t", "steps": steps})


def speech(_sp) -> bytes:
    t = np.arange(16000) / 16000
    return (np.sin(2 * np.pi * 300 * t) * 8000).astype("<i2").tobytes()  # 1 s, onset at frame 0


class Line:
    """A fake wire: agent audio in frames [talk_from, talk_to), our speech as the runner asks for it.

    The call ends at frame `end_at`; each `Transcribe` is answered with the next of `heard` on the following frame.
    """

    def __init__(self, talk_from: int, talk_to: int, heard: list[Heard] | None = None, end_at: int = 10**9,
                 silent: tuple[range, ...] = ()) -> None:
        self.talk = (talk_from, talk_to)
        self.silent = silent
        """Frames inside the talk where the agent is silent (its pauses)."""
        self.heard = list(heard or [])
        self.asked: list[Transcribe] = []
        self.end_at = end_at
        self.frame = 0
        self.queue = 0
        self.speech_start: int | None = None
        self.speech_end: int | None = None
        self.last_audio = -1
        self.run = 0

    def step(self, runner: ScriptRunner) -> list:
        f = self.frame
        if self.talk[0] <= f < self.talk[1] and not any(f in r for r in self.silent):
            self.last_audio, self.run = f, self.run + 1
        else:
            self.run = 0
        if self.queue:
            self.speech_start = f if self.speech_start is None else self.speech_start
            self.queue -= 1
            if not self.queue:
                self.speech_end = f
        o = Observation(f * 0.02, f, self.last_audio, self.run, self.queue > 0, self.speech_start, self.speech_end,
                        True, f >= self.end_at, 200)
        if self.asked and self.heard and runner.transcribing:
            runner.hear(self.heard.pop(0))
        actions = runner.tick(o)
        for a in actions:
            if isinstance(a, Speak):
                self.queue, self.speech_start, self.speech_end = len(a.frames), None, None
            if isinstance(a, Transcribe):
                self.asked.append(a)
        self.frame += 1
        return actions


def drive(runner: ScriptRunner, line: Line, frames: int) -> list:
    out = []
    for _ in range(frames):
        out += line.step(runner)
        if runner.done:
            break
    return out


def test_wait_speech_measures_latency_and_times_out():
    r = ScriptRunner(script([{"wait_speech": {"timeout_s": 5}}]), speech)
    drive(r, Line(30, 100), 200)
    assert r.results[0].ok and r.results[0].metrics["latency_ms"] == 600
    r = ScriptRunner(script([{"wait_speech": {"timeout_s": 1}}, {"dtmf": "1"}]), speech)
    actions = drive(r, Line(500, 600), 200)
    assert [x.ok for x in r.results] == [False, False] and not any(isinstance(a, SendDtmf) for a in actions)


def test_interrupt_reaction_from_the_callers_onset():
    # the agent talks until frame 80; the caller starts speaking at frame 75 (after_ms 1500 from frame 0)
    r = ScriptRunner(script([{"interrupt": {"say": "x", "after_ms": 1500, "expect_stop_ms": 200}}]), speech)
    drive(r, Line(0, 80), 300)
    res = r.results[0]
    assert res.ok, res
    assert res.metrics["reaction_ms"] == (79 - 76 + 1) * 20  # onset at the first sent frame (76)
    assert res.metrics["into_talk_ms"] == 76 * 20
    assert res.marks == {"caller onset": 76, "agent stop": 80}


def test_interrupt_counts_after_ms_from_the_agents_onset():
    """`after_ms` runs from the onset of the agent's talk, not from the step's start: of the talk it begins later,
    or of the talk under way when the step starts (a pause under a second is part of it, a longer one is not)."""
    step = {"interrupt": {"say": "x", "after_ms": 500, "expect_stop_ms": 5000}}

    def caller_onset(steps: list[dict], line: Line) -> tuple[int, float]:
        r = ScriptRunner(script(steps), speech)
        drive(r, line, 200)
        res = r.results[-1]
        return res.marks["caller onset"], res.metrics["into_talk_ms"]

    assert caller_onset([step], Line(50, 100)) == (76, 520)  # the agent starts at frame 50: speaks at 75
    # the step starts at frame 30, in a 300 ms pause of a talk begun at frame 0: at its next words (frame 35)
    assert caller_onset([{"wait": 0.6}, step], Line(0, 100, silent=(range(20, 35),))) == (37, 740)
    # after 1.1 s of silence the agent's words from frame 75 are a new talk: 500 ms into it
    assert caller_onset([{"wait": 0.6}, step], Line(0, 150, silent=(range(20, 75),))) == (101, 520)


def test_interrupt_fails_when_the_agent_never_talks_long_enough():
    step = {"interrupt": {"say": "x", "after_ms": 500, "timeout_s": 1}}
    r = ScriptRunner(script([step]), speech)
    actions = drive(r, Line(10, 30), 200)  # 400 ms of talk, then silence
    res = r.results[0]
    assert not res.ok and not any(isinstance(a, Speak) for a in actions)
    assert res.message == "the agent did not talk for 500 ms within 1.5 s, so there was nothing to interrupt"
    assert res.end_frame == 76


def test_timeline_marks_the_barge_in_and_writes_the_latencies(tmp_path: Path):
    steps = [StepResult(0, "wait_speech", True, "", 1.0, {"latency_ms": 600}, 0, 30, marks={"step start": 0,
                                                                                            "agent onset": 30}),
             StepResult(1, "interrupt", True, "", 2.0, {"reaction_ms": 80}, 30, 120,
                        marks={"caller onset": 76, "agent stop": 80}),
             StepResult(2, "interrupt", False, "the agent did not stop talking", 2.0, {"reaction_ms": float("inf")},
                        120, 200, marks={"caller onset": 150})]
    r = CallReport("s", "s.yaml", "sip:a@b", 200, 200, 0.1, "PCMU/8000", 4.0, steps, sent_db=[-90.0] * 200,
                   heard_db=[-20.0] * 200, caller_speech=[(76, 125)],
                   agent_audio=audio_runs(bytes([0] * 30 + [1] * 50 + [0, 1, 0] + [1] * 20)))
    assert r.agent_audio == [(30, 79), (83, 102)]  # a lone loud frame is no run
    html([r], tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert page.count('class="segment caller-speech"') == 1 and page.count('class="segment agent-audio"') == 2
    assert "<title>caller speech 1.52-2.52 s</title>" in page and "<title>agent audio 0.60-1.60 s</title>" in page
    assert page.count('class="mark caller-onset"') == 2 and page.count('class="mark agent-stop"') == 1
    assert page.count('class="mark agent-onset"') == 1
    assert ">reaction 80 ms<" in page and ">latency 600 ms<" in page and page.count('class="latency"') == 2


def test_interrupt_fails_when_the_agent_keeps_talking():
    r = ScriptRunner(script([{"interrupt": {"say": "x", "after_ms": 100, "expect_stop_ms": 100}}]), speech)
    drive(r, Line(0, 1000), 400)
    assert not r.results[0].ok and "did not stop" in r.results[0].message


def test_backchannel_passes_only_if_the_agent_carries_on():
    r = ScriptRunner(script([{"backchannel": {"say": "x", "after_ms": 100, "expect_continue_s": 1}}]), speech)
    drive(r, Line(0, 1000), 400)
    assert r.results[0].ok
    r = ScriptRunner(script([{"backchannel": {"say": "x", "after_ms": 100, "expect_continue_s": 1}}]), speech)
    drive(r, Line(0, 20), 400)
    assert not r.results[0].ok


def test_backchannel_fails_when_the_agent_pauses_too_long_and_reports_the_pause():
    # the caller speaks frames 6-55 ("uh-huh" of 1 s); the agent pauses from frame 10
    step = {"backchannel": {"say": "x", "after_ms": 100, "expect_continue_s": 1, "max_pause_ms": 1500}}
    r = ScriptRunner(script([step]), speech)
    drive(r, Line(0, 1000, silent=(range(10, 60),)), 400)
    assert r.results[0].ok and r.results[0].metrics["pause_ms"] == 1000, r.results[0]
    r = ScriptRunner(script([step]), speech)
    drive(r, Line(0, 1000, silent=(range(10, 100),)), 400)  # resumes within 1 s of the end, after 1.8 s of silence
    res = r.results[0]
    assert not res.ok and res.metrics["pause_ms"] == 1800
    assert res.message == "the agent paused 1800 ms for the backchannel (at most 1500 ms)"
    r = ScriptRunner(script([step]), speech)
    drive(r, Line(0, 1000, silent=(range(2, 5), range(200, 230))), 400)  # pauses before the onset do not count
    assert r.results[0].ok and r.results[0].metrics["pause_ms"] == 0, r.results[0]


def test_backchannel_then_says_checks_the_agent_resumed_its_reply():
    """The agent resumes at frame 60; its words from there are transcribed: the paused reply passes, a new
    prompt in its place fails."""
    step = {"backchannel": {"say": "x", "after_ms": 100, "then_says": ["interrupting", "listens"]}}
    r = ScriptRunner(script([step]), speech)
    line = Line(0, 150, [Heard("interrupting me. Voicegate listens while it speaks.", 0.9)], silent=(range(10, 60),))
    drive(r, line, 400)
    assert line.asked == [Transcribe(60, 149, "moonshine")]  # from the resumption to a second of quiet
    assert r.results[0].ok and r.results[0].transcript.startswith("interrupting"), r.results[0]
    r = ScriptRunner(script([step]), speech)
    line = Line(0, 1000, [Heard("Press 1 for an echo test.", 0.9)], silent=(range(10, 60),))
    drive(r, line, 400)
    res = r.results[0]
    assert line.asked == [Transcribe(60, 260, "moonshine")]  # it talks on: cut after 4 s
    assert not res.ok and res.metrics["pause_ms"] == 1000
    assert res.message == ("after the backchannel, expected one of 'interrupting', 'listens' in "
                           "'Press 1 for an echo test.'")
    assert "moonshine" in uses_asr(script([step]))


def test_expect_no_barge_in_counts_the_agents_stops_while_the_caller_is_silent():
    step = {"expect_no_barge_in": {"for_s": 3, "max_pause_ms": 400}}
    r = ScriptRunner(script([step]), speech)
    drive(r, Line(0, 1000, silent=(range(20, 35), range(60, 61))), 400)  # 300 ms between sentences, a 20 ms dip
    assert r.results[0].ok and r.results[0].metrics == {"false_barge_ins": 0, "max_pause_ms": 300}, r.results[0]
    r = ScriptRunner(script([step, {"hangup": {}}]), speech)
    drive(r, Line(0, 1000, silent=(range(20, 50), range(100, 125))), 400)
    res = r.results[0]
    assert not res.ok and res.metrics == {"false_barge_ins": 2, "max_pause_ms": 600}
    assert res.message == ("the agent's audio stopped 2 time(s) while the caller was silent (over 400 ms): "
                           "600 ms at 0.40 s, 500 ms at 2.00 s")
    # the caller talking over the agent is no false barge-in; an agent that stops for good is one
    r = ScriptRunner(script([{"say": "x", "wait": False}, step]), speech)
    drive(r, Line(0, 1000, silent=(range(10, 40),)), 400)
    assert r.results[1].ok, r.results[1]
    r = ScriptRunner(script([step]), speech)
    drive(r, Line(0, 50), 400)
    assert not r.results[0].ok and r.results[0].metrics["false_barge_ins"] == 1
    report = CallReport("s", "s.yaml", "sip:a@b", 200, 200, 0.1, "PCMU/8000", 5.0, r.results)
    assert report.false_barge_ins == 1 and "false barge-ins: 1" in console([report])
    assert CallReport("s", "s.yaml", "sip:a@b", 200, 200, 0.1, "PCMU/8000", 5.0).false_barge_ins is None


HOURS = "Reception is open from seven in the morning to eleven at night."


def test_expect_speech_transcribes_the_reply_and_measures_the_turn():
    # the caller speaks frames 1-50; the agent answers in frames [80, 180)
    r = ScriptRunner(script([{"say": "x"}, {"expect_speech": {"contains": ["reception is open"], "silence_s": 1}}]),
                     speech)
    line = Line(80, 180, [Heard(HOURS, 0.93, 250.0)])
    drive(r, line, 400)
    assert line.asked == [Transcribe(80, 179, "moonshine")]
    res = r.results[1]
    assert res.ok, res
    assert res.transcript == HOURS
    assert res.metrics == {"latency_ms": (80 - 50 - 1) * 20, "duration_s": 2.0, "confidence": 0.93, "asr_ms": 250.0}
    assert res.end_frame == 179 + 50 + 1  # a second of quiet, then the transcript on the next frame


def test_expect_speech_failure_names_the_expectation_and_the_transcript():
    steps = [{"expect_speech": {"contains": ["operator"]}}, {"dtmf": "1"}]
    r = ScriptRunner(script(steps), speech)
    drive(r, Line(30, 100, [Heard("Putting you through to reception.", 0.9)]), 400)
    assert [x.ok for x in r.results] == [False, False]
    assert r.results[0].message == "expected 'operator' in 'Putting you through to reception.'"
    assert r.results[0].transcript == "Putting you through to reception."
    assert r.results[0].metrics["latency_ms"] == 600  # no caller utterance before it: answer -> speech


def test_expect_speech_times_out_without_asking_the_asr():
    r = ScriptRunner(script([{"expect_speech": {"timeout_s": 1}}]), speech)
    line = Line(500, 600)
    drive(r, line, 200)
    assert not r.results[0].ok and "no agent speech within 1.0 s" in r.results[0].message and not line.asked


def test_expect_speech_checks_an_utterance_cut_by_the_hang_up():
    r = ScriptRunner(script([{"expect_speech": {"any_of": ["goodbye"]}}, {"expect_hangup": {}}]), speech)
    line = Line(10, 60, [Heard("Thank you for calling, goodbye.", 0.8)], end_at=60)  # no time to pause
    drive(r, line, 200)
    assert line.asked == [Transcribe(10, 59, "moonshine")]
    assert [x.ok for x in r.results] == [True, True], r.results


def test_expect_speech_cuts_a_long_utterance_and_reports_asr_errors():
    r = ScriptRunner(script([{"expect_speech": {"max_s": 1}}]), speech)
    line = Line(0, 1000, [Heard("", 0.0, error="moonshine: boom")])
    drive(r, line, 200)
    assert line.asked == [Transcribe(0, 49, "moonshine")]
    assert not r.results[0].ok and r.results[0].message == "ASR failed: moonshine: boom"


@pytest.mark.parametrize(("expect", "text", "why"), [
    ({"contains": ["harbour hotel", "help"]}, "Thanks for calling Harbour Hotel. How can I help?", ""),
    ({"contains": ["HOTEL."]}, "harbour hotel", ""),
    ({"contains": ["open"]}, "We opened at seven.", "expected 'open' in 'We opened at seven.'"),
    ({"any_of": ["harbour", "harbor"]}, "Harbor Hotel", ""),
    ({"any_of": ["a", "b"]}, "c", "expected one of 'a', 'b' in 'c'"),
    ({"not_contains": ["sorry"]}, "Sorry, I can't.", "did not expect 'sorry' in \"Sorry, I can't.\""),
    ({"contains": ["what's on"]}, "Whats on tonight", ""),
    ({"contains": ["delivery", "today"]}, "Out for delivery, to-day.", ""),
    ({"contains": ["well known"]}, "A well-known hotel", ""),
    ({"contains": ["wellknown"]}, "A well-known hotel", ""),
    ({"contains": ["today"]}, "to day", "expected 'today' in 'to day'"),
    ({"matches": r"harbou?r\s+hotel"}, "HARBOR HOTEL", ""),
    ({"matches": r"^open"}, "We are open", "expected /^open/ to match 'We are open'"),
    ({"min_confidence": 0.5}, "hi", "ASR confidence 0.40 is below 0.5 for 'hi'"),
])
def test_transcript_checks(expect: dict, text: str, why: str):
    assert ExpectSpeechArgs.model_validate(expect).failure(text, 0.4 if "min_confidence" in expect else 1.0) == why


def test_script_errors_name_the_line(tmp_path: Path):
    f = tmp_path / "s.yaml"
    f.write_text("name: x\nsteps:\n  - say: hi\n    voice: joe\n    wait: false\n  - expect_speech:\n"
                 "      contains: [reception]\n      matchs: open\n  - expect_speech:\n      matches: '(open'\n"
                 "      engine: whisper\n  - sing: la\n")
    with pytest.raises(ConfigError) as e:
        load_script(f)
    issues = [str(i) for i in e.value.issues]
    assert len(issues) == 4, issues
    assert any(i.startswith(f"{f}:8: ") and "matchs" in i and "Extra inputs" in i for i in issues)
    assert any(i.startswith(f"{f}:10: ") and "bad regular expression" in i for i in issues)
    assert any(i.startswith(f"{f}:11: ") and "unknown ASR engine 'whisper'" in i for i in issues)
    assert any(i.startswith(f"{f}:12: steps.3: not a step") for i in issues)


def test_reports_show_what_expect_speech_heard(tmp_path: Path):
    steps = [StepResult(0, "expect_speech", True, "", 3.0, {"latency_ms": 300}, 0, 150, "Harbor Hotel <hi>"),
             StepResult(1, "expect_speech", False, "expected 'x' in 'y'", 2.0, {}, 150, 250, "y")]
    r = CallReport("s", "s.yaml", "sip:a@b", 200, 200, 0.1, "PCMU/8000", 5.0, steps, sent_db=[-90.0] * 250,
                   heard_db=[-20.0] * 250)
    assert "heard 'Harbor Hotel <hi>'" in console([r]) and "expected 'x' in 'y'" in console([r])
    junit([r], tmp_path / "j.xml")
    outs = [c.findtext("system-out") for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase")]
    assert outs == [None, "heard 'Harbor Hotel <hi>'", "heard 'y'"]
    html([r], tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert page.count("Harbor Hotel &lt;hi&gt;") == 3  # the table, the timeline label and its tooltip


def test_every_report_names_the_seed(tmp_path: Path):
    """The run's seed is in each call's report, impaired or not, with every digit (JUnit writes floats as %g)."""
    r = CallReport("s", "s.yaml", "sip:a@b", 200, 200, 0.1, "PCMU/8000", 5.0, seed=2147483646)
    assert "5.0 s, seed 2147483646" in console([r]).splitlines()[0]
    junit([r], tmp_path / "j.xml")
    props = {p.get("name"): p.get("value") for p in ET.parse(tmp_path / "j.xml").getroot().iter("property")}
    assert props == {"call.seed": "2147483646"}
    html([r], tmp_path / "r.html")
    assert "seed 2147483646" in (tmp_path / "r.html").read_text()


def test_dial_options_are_checked_with_their_lines(tmp_path: Path):
    f = tmp_path / "s.yaml"
    f.write_text("name: x\ndial:\n  headers:\n    Call-ID: abc\n    'X Bad': '1'\n  from: {user: 'a b'}\n"
                 "  to: {user: desk, display: Front Desk}\n")
    with pytest.raises(ConfigError) as e:
        load_script(f)
    issues = [str(i) for i in e.value.issues]
    assert any(i.startswith(f"{f}:4: dial.headers") and "Call-ID is written by the phone" in i for i in issues), issues
    assert any(i.startswith(f"{f}:6: dial.from.user") for i in issues), issues
    ok = Script.model_validate({"name": "t", "dial": {"from": {"user": "qa", "display": "QA"}, "to": {"user": "1"}}})
    assert ok.dial.from_ is not None and ok.dial.from_.uri("127.0.0.1") == '"QA" <sip:qa@127.0.0.1>'


def test_dtmf_reply_time_from_the_key_to_the_agents_next_onset():
    r = ScriptRunner(script([{"dtmf": "2", "expect_reply_ms": 1000}]), speech)
    actions = drive(r, Line(30, 100), 200)
    assert [a.digits for a in actions if isinstance(a, SendDtmf)] == ["2"]
    assert r.results[0].ok and r.results[0].metrics["reply_ms"] == 600
    r = ScriptRunner(script([{"dtmf": "2", "expect_reply_ms": 300}]), speech)
    drive(r, Line(30, 100), 200)
    assert not r.results[0].ok and r.results[0].metrics["reply_ms"] == 600
    assert r.results[0].message == "the agent answered the keys after 600 ms"
    # an agent that talks straight through the key has not answered it
    r = ScriptRunner(script([{"dtmf": "2", "expect_reply_ms": 300}]), speech)
    drive(r, Line(0, 1000), 200)
    assert not r.results[0].ok and "no agent audio within 1300 ms" in r.results[0].message


def test_a_step_that_fails_after_keys_names_them():
    """A menu without the pressed key's branch: the prompt the script expects never comes, and the failure says
    which keys it followed and what was expected instead."""
    steps = [{"wait_speech": {}}, {"dtmf": "9"}, {"expect_speech": {"contains": ["time"], "timeout_s": 3}},
             {"hangup": {}}]
    r = ScriptRunner(script(steps), speech)
    drive(r, Line(10, 100, [Heard("Sorry, I did not get that.", 0.9)]), 400)
    assert [x.ok for x in r.results] == [True, True, False, False]
    assert r.results[2].message == "after dtmf '9' (step 2): expected 'time' in 'Sorry, I did not get that.'"
    assert r.results[3].message == "an earlier step failed"
    r = ScriptRunner(script(steps[1:]), speech)
    drive(r, Line(500, 600), 400)  # nothing at all after the key
    assert r.results[1].message == "after dtmf '9' (step 1): no agent speech within 3.0 s"


def test_expect_transfer_matches_refer_to_by_glob_or_regex():
    def run(to: str, refers: tuple[str, ...], frames: int = 100) -> StepResult:
        r = ScriptRunner(script([{"expect_transfer": {"to": to, "timeout_s": 1}}]), speech)
        for f in range(frames):
            r.tick(Observation(f * 0.02, f, -1, 0, False, None, None, True, False, 200,
                               refers if f >= 10 else ()))
            if r.done:
                break
        return r.results[0]

    assert run("sip:operator@*", ("<sip:operator@example.com>",)).ok
    assert run("/^sip:(operator|desk)@/", ("sip:desk@10.0.0.1;transport=tcp",)).ok
    bad = run("sip:sales@*", ("sip:operator@example.com",))
    assert not bad.ok and bad.message == "transferred to sip:operator@example.com, expected sip:sales@*"
    late = run("*", ())
    assert not late.ok and late.message == "no transfer (REFER) within 1.0 s"
    with pytest.raises(ValidationError, match="bad regular expression"):
        Script.model_validate({"name": "t", "steps": [{"expect_transfer": {"to": "/(x/"}}]})
