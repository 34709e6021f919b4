"""The scripted agent driven through a real CallSession and CallMedia, with a fast simulated media clock."""

from __future__ import annotations

import asyncio
import wave
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter

from agents.config import AgentConfig
from agents.scripted import FlowError, ScriptedAgent
from agents.session import CallSession
from media.frames import SILENCE
from media.recorder import StereoRecorder
from tests.unit.scripted_call import run_scripted, said

FLOW = """
type: scripted
voice: en
start: menu
nodes:
  menu:
    - say: "Press one for sales or two for support. This prompt is long enough to be interrupted by a key."
      interruptible: {interruptible}
    - collect: choice
      timeout_s: 0.6
    - branch: choice
      cases: {{"1": sales, "2": support}}
      default: nothing
  sales:
    - say: "Sales."
    - hangup: sales
  support:
    - say: "Support."
    - hangup: support
  nothing:
    - say: "Nothing."
    - hangup: nothing
"""


CALLER = bytes([1, 0]) * 320
"""A quiet constant caller frame, to see in a recording."""


async def run_call(interruptible: bool, keys: list[tuple[float, str]], flow_text: str = FLOW,
                   recorder: StereoRecorder | None = None) -> tuple[CallSession, list[dict[str, Any]]]:
    flow = flow_text.format(interruptible=str(interruptible).lower())
    session, logs, actions = await run_scripted(flow, keys, recorder=recorder,
                                                caller_frame=CALLER if recorder is not None else SILENCE)
    assert actions.transfers == [] and actions.dtmf == []
    return session, logs


def frames_of(session: CallSession, texts: list[str]) -> int:
    return sum(-(-len(session.prompts._prepared[("en", t)]) // 640) for t in texts)


def test_prompts_rendered_at_prepare_are_the_ones_calls_use():
    session, _ = asyncio.run(run_call(True, []))
    assert {voice for voice, _ in [*session.prompts._prepared, *session.prompts._recent]} == {"en"}


@pytest.mark.timeout(60)
def test_key_during_interruptible_prompt_stops_it_and_selects_the_branch():
    session, logs = asyncio.run(run_call(True, [(0.5, "2")]))
    assert said(logs)[-1] == "Support."
    assert session.record.end_reason == "support"
    heard = session.media.stats.speech_frames_out
    assert heard < frames_of(session, said(logs)) - 50, "the menu prompt was not cut by the key"


@pytest.mark.timeout(60)
def test_protected_prompt_plays_out_but_the_key_still_counts():
    session, logs = asyncio.run(run_call(False, [(0.5, "1")]))
    assert said(logs)[-1] == "Sales."
    assert session.record.digits == "1"
    assert session.media.stats.speech_frames_out == frames_of(session, said(logs))


@pytest.mark.timeout(60)
def test_no_key_takes_the_default_branch():
    session, logs = asyncio.run(run_call(True, []))
    assert said(logs)[-1] == "Nothing."
    assert session.record.end_reason == "nothing"


SECURE_FLOW = """
type: scripted
voice: en
start: pay
nodes:
  pay:
    - say: "Key the card."
    - collect: card
      max_digits: 4
      timeout_s: 1
      secure: true
    - collect: more
      timeout_s: 0.6
    - branch: card
      cases: {{"4242": ok}}
      default: bad
  ok:
    - say: "Accepted."
    - hangup: paid
  bad:
    - say: "Declined."
    - hangup: declined
"""


@pytest.mark.timeout(60)
def test_a_secure_collect_masks_the_keys_and_silences_the_recording_but_the_flow_gets_them():
    rec = StereoRecorder()
    keys = [(0.8 + 0.1 * i, d) for i, d in enumerate("4242")] + [(1.6, "7")]
    session, logs = asyncio.run(run_call(True, keys, SECURE_FLOW, rec))
    assert said(logs)[-1] == "Accepted." and session.record.end_reason == "paid"
    assert session.record.digits == "xxxx7"
    assert [e["on"] for e in logs if e["event"] == "secure_capture"] == [True, False]
    caller = np.frombuffer(rec.take(), dtype="<i2")[::2]
    frames = caller[: len(caller) // 320 * 320].reshape(-1, 320).any(axis=1)
    gaps = np.flatnonzero(np.diff(frames.astype(int)))  # where the caller channel goes silent and comes back
    assert len(gaps) == 2, gaps
    assert 1.0 <= (gaps[1] - gaps[0]) * 0.02 < 4, gaps  # silent from the prompt to the fourth key


class PlayRecorder:
    """Just enough of a call for a flow of play steps."""

    caller = "caller"
    called = "100"
    sip_headers: dict[str, str] = {}

    def __init__(self) -> None:
        self.played: list[tuple[int, int]] = []
        self.ended = ""

    async def play(self, pcm: bytes, rate: int, interruptible: bool = True) -> None:
        self.played.append((len(pcm), rate))

    async def hangup(self, reason: str) -> None:
        self.ended = reason


def test_play_step_plays_the_wav_at_16k_and_a_bad_one_names_node_and_file(tmp_path):
    wav = tmp_path / "hello.wav"
    with wave.open(str(wav), "wb") as w:  # 0.5 s at 8 kHz
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(8000))
    cfg = TypeAdapter(AgentConfig).validate_python(
        {"type": "scripted", "start": "a", "nodes": {"a": [{"play": str(wav)}, {"play": str(tmp_path / "no.wav")}]}})
    call = PlayRecorder()
    with pytest.raises(FlowError, match=r"a\[1\]: cannot read .*no\.wav"):
        asyncio.run(ScriptedAgent(cfg).run(call))  # type: ignore[arg-type]
    assert call.played == [(16000, 16000)]


def test_a_dtmf_step_sends_its_keys_and_bad_keys_are_refused():
    flow = "type: scripted\nvoice: en\nstart: a\nnodes:\n  a:\n    - dtmf: '1#9'\n    - hangup: sent\n"
    session, _, actions = asyncio.run(run_scripted(flow, []))
    assert actions.dtmf == ["1#9"] and session.record.end_reason == "sent"
    with pytest.raises(ValueError, match="dtmf"):
        TypeAdapter(AgentConfig).validate_python(
            {"type": "scripted", "start": "a", "nodes": {"a": [{"dtmf": "12x"}]}})


def test_recording_steps_pause_and_resume_the_recording_and_the_log_says_who():
    flow = """
type: scripted
voice: en
start: a
nodes:
  a:
    - say: "Before."
    - recording: pause
    - say: "Your card number is four two four two."
    - recording: resume
    - say: "After."
    - hangup: done
"""
    rec = StereoRecorder()
    session, logs, _ = asyncio.run(run_scripted(flow, [], recorder=rec, caller_frame=CALLER))
    assert [(e["event"], e["by"], e["recorded"]) for e in logs if e["event"].startswith("recording_")] == [
        ("recording_paused", "agent", True), ("recording_resumed", "agent", True)]
    [pause] = rec.pause_intervals()
    agent = np.frombuffer(rec.take(), dtype="<i2")[1::2]
    frames = agent[: len(agent) // 320 * 320].reshape(-1, 320)
    start, end = round(pause["start_s"] * 50), round(pause["end_s"] * 50)
    card = frames_of(session, ["Your card number is four two four two."])
    assert abs((end - start) - card) <= 3, (start, end, card)  # the stretch is the sentence that was paused
    assert not frames[start:end].any()  # silent while paused, agent and caller
    assert np.abs(frames[:start]).max() > 1000 and np.abs(frames[end:]).max() > 1000  # heard before and after
