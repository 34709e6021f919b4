"""The cascaded agent: caller speech -> turns + incremental ASR -> a brain (rule-based dialog or LLM) -> TTS.

Every stage streams: the brain's first sentence is rendered and queued while it writes the next, and barge-in (the
media layer already flushed the audio) cancels the brain's stream and any rendering at once; the brain is told what
the caller heard. Each turn's timings go to the call record, measured from the end of the caller's speech.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agents.backchannel import BackchannelJudge
from agents.base import Agent, AgentFactory, BargeIn, CallControl, Dtmf, Handover, HungUp, Played
from agents.brain import Act, Brain, DialogBrain, LlmBrain, Part, Say, UserTurn
from agents.config import CascadedAgentConfig, EngineLoadError, TurnConfig
from agents.dialog import Dialog
from agents.eventlog import trace
from agents.listener import HeardTurn, Listener, reply_fate
from agents.llm import LlmClient, LlmConfig
from agents.speech.asr import AsrError, Transcript
from agents.speech.sentences import SentenceSplitter
from agents.speech.tts import TtsError, engine_for, for_playout, load_voice, speaking, synthesize_fixed, warm
from agents.speech.worker import AsrWorker, EngineSpec
from agents.tools import CallTools, ToolConfig, ToolRunner
from agents.turn import TurnDetector, TurnSettings, reads_as
from media.frames import SAMPLE_RATE
from media.paralinguistics import analyse_pcm

_DEVANAGARI = re.compile(r"[\u0900-\u097F]")
_SEGMENT = re.compile(r"([\u0900-\u097F][\u0900-\u097F\s\d,.!?।']*)")


def split_by_script(text: str) -> list[tuple[str, str]]:
    """Split mixed Hindi-English text into (language, text) runs: Devanagari is `hi`, the rest `en`."""
    if not _DEVANAGARI.search(text):
        return [("en", text)]
    out: list[tuple[str, str]] = []
    for piece in _SEGMENT.split(text):
        piece = piece.strip()
        if piece and re.search(r"\w", piece):
            out.append(("hi" if _DEVANAGARI.search(piece) else "en", piece))
    return out


def voice_runs(text: str, caller_language: str | None, voices: Mapping[str, str], default: str
               ) -> list[tuple[str, str]]:
    """The (voice, text) runs to synthesise `text` with: Devanagari in the `hi` voice, any other script in the voice
    of the caller's language (the one detected in their latest turn), each falling back to `default`; a
    multilingual voice speaks the run's language (`speaking`); neighbouring runs of one voice are joined, so the
    engine keeps the sentence's prosody."""
    out: list[tuple[str, str]] = []
    for lang, run in split_by_script(text):
        key = lang if lang == "hi" or caller_language is None else caller_language
        if key in voices:
            voice = speaking(voices[key], key)
        else:
            voice = speaking(default, "hi" if lang == "hi" else caller_language)
        if out and out[-1][0] == voice:
            out[-1] = (voice, f"{out[-1][1]} {run}")
        else:
            out.append((voice, run))
    return out


@dataclass
class _Reply:
    """One reply being spoken: the sentences queued, and how each ended."""

    sentences: list[str] = field(default_factory=list)
    voices: list[str] = field(default_factory=list)
    """The voice of each sentence."""
    played: list[asyncio.Future[Played]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    superseded: bool = False

    def first_rtp(self) -> float | None:
        """The media tick that sent the reply's first frame (None: none went out, or not known yet)."""
        fut = self.played[0] if self.played else None
        if fut is None or not fut.done() or fut.cancelled():
            return None
        return fut.result().started_at

    def heard(self) -> tuple[list[str], bool]:
        spoken: list[str] = []
        for text, fut in zip(self.sentences, self.played, strict=True):
            if not fut.done():
                return spoken, True
            p = fut.result()
            if p.played_ms > 0:
                spoken.append(text)
            if p.interrupted:
                return spoken, True
        return spoken, False


class CascadedAgent(Agent):
    def __init__(self, factory: CascadedFactory, handover: Handover | None = None) -> None:
        self.f = factory
        self.handover = handover if handover is not None and handover.messages else None
        self.cfg = factory.cfg
        self.brain: Brain = factory.new_brain()
        self._reply: asyncio.Task[None] | None = None
        self._current: _Reply | None = None
        self._inputs: asyncio.Queue[HeardTurn | str] = asyncio.Queue()
        self._hangup_requested = False
        self._asr_s = 0.0
        self.listener: Listener | None = None
        self.language: str | None = None
        """The language the caller spoke in their latest turn (from the ASR); replies are voiced in it."""
        self.transcript: list[tuple[Literal["user", "assistant"], str]] = []
        """The conversation as the caller heard it: their turns and keys, and what they heard of each reply."""

    async def run(self, call: CallControl) -> None:
        assert self.f.asr is not None
        turns = TurnDetector(TurnSettings(endpoint_ms=self.cfg.turn.endpoint_ms, hold_ms=self.cfg.turn.hold_ms))
        bc = self.cfg.backchannels
        listener = self.listener = Listener(call, self.f.asr, turns,
                                            BackchannelJudge(bc.settings()) if bc is not None else None)
        if bc is not None:
            call.hold_barge_in(bc.wait_ms, bc.confirm_early)
        runner = ToolRunner(self.f.tools, list(self.f.tools)) if self.f.tools else None
        if isinstance(self.brain, LlmBrain):
            self.brain.meter = call.meter
        if isinstance(self.brain, LlmBrain | DialogBrain) and runner is not None:
            self.brain.tools = CallTools(runner, call)
            self.brain.tools.asks_confirmation = True
        tasks = [asyncio.create_task(listener.run()), asyncio.create_task(self._pump(listener)),
                 asyncio.create_task(self._events(call))]
        try:
            if self.handover is None:
                await self._speak(call, _parts(Say(self.brain.greeting())), {})
            else:  # another backend began the call: no greeting, the conversation goes on
                self.brain.resume(self.handover.messages)
                self.transcript.extend(self.handover.messages)
            while True:
                item = await self._inputs.get()
                turns.expect_code = self.brain.expects_code
                if isinstance(item, str):
                    self.transcript.append(("user", f"(key {item})"))
                    parts = self.brain.on_dtmf(item)
                    marks: dict[str, float] = {}
                else:
                    self._meter_asr(call, item)
                    if call.speaking and not item.continued:
                        continue  # speech over our audio that was not a barge-in: a backchannel or echo
                    turn = await self._user_turn(call, item)
                    if turn is None:
                        continue
                    if await self.hand_over(turn, item):
                        return
                    self.transcript.append(("user", turn.text))
                    self.language = turn.language
                    parts = self.brain.respond(turn)
                    marks = {"speech_end": item.speech_end}
                reply = self._reply = asyncio.create_task(self._speak(call, parts, marks, item))
                try:
                    await asyncio.wait({reply})  # a barge-in cancels the reply, not this loop
                finally:
                    self._reply = None
                if not reply.cancelled() and reply.exception() is not None:
                    raise reply.exception()  # type: ignore[misc]
                if self._hangup_requested:
                    return
        finally:
            if bc is not None:
                call.hold_barge_in(None)  # a backend taking over (agents.hybrid) may hear no words
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.brain.close()
            if runner is not None:
                await runner.aclose()

    async def hand_over(self, turn: UserTurn, heard: HeardTurn) -> bool:
        """Whether another backend takes the call from this turn on and answers it (agents.hybrid): the cascade then
        stops here, between replies. Alone, it never does."""
        return False

    async def _pump(self, listener: Listener) -> None:
        while True:
            self._inputs.put_nowait(await listener.heard.get())

    async def _events(self, call: CallControl) -> None:
        while True:
            ev = await call.next_event()
            if isinstance(ev, BargeIn) and self._reply is not None:
                if self._current is not None:
                    self._current.marks["barge_in"] = time.monotonic() if ev.t is None else ev.t
                    if ev.onset_t is not None:
                        self._current.marks["barge_in_onset"] = ev.onset_t
                self._reply.cancel()
            elif isinstance(ev, Dtmf):
                tools = self.brain.tools if isinstance(self.brain, LlmBrain | DialogBrain) else None
                if tools is not None and tools.key(ev.digit):
                    continue  # the answer to a tool's confirmation prompt
                if self._reply is not None:
                    self._reply.cancel()
                self._inputs.put_nowait(ev.digit)
            elif isinstance(ev, HungUp):
                return

    def _meter_asr(self, call: CallControl, heard: HeardTurn) -> None:
        """Count each turn's audio once: a continued turn adds only what it added to the turn it continues."""
        seconds = len(heard.pcm) / 2 / SAMPLE_RATE
        call.meter("asr_s", max(0.0, seconds - self._asr_s) if heard.continued else seconds)
        self._asr_s = seconds

    async def _user_turn(self, call: CallControl, heard: HeardTurn) -> UserTurn | None:
        tr = heard.transcript
        if heard.error:
            call.record_turn({"backend": "cascaded", "error": heard.error})
            await call.say(self.cfg.apology)
            return None
        speech_s = round(len(heard.pcm) / 2 / SAMPLE_RATE, 2)
        trace("asr_final", chars=len(tr.text), language=tr.language or "en", confidence=round(tr.confidence, 2),
              passes=heard.passes, speech_s=speech_s)  # chars 0: no words in it (a cough), or the ASR lost them
        if not tr.text:
            return None
        prosody = analyse_pcm(heard.pcm) if self.cfg.paralinguistics else None
        return UserTurn(tr.text, tr.language or "en", tr.confidence, prosody)

    def _voice_runs(self, text: str) -> list[tuple[str, str]]:
        return voice_runs(text, self.language, self.cfg.voices, self.cfg.voice)

    async def _speak(self, call: CallControl, parts: AsyncIterator[Part], marks: dict[str, float],
                     heard: HeardTurn | str | None = None) -> None:
        reply = _Reply(marks=marks)
        self._current = reply
        t0 = time.monotonic()
        interrupted = False
        try:
            async for part in parts:
                reply.marks.setdefault("first_part", time.monotonic())
                if isinstance(part, Say):
                    for voice, text in self._voice_runs(part.text):
                        started = time.monotonic()
                        pcm, rate = await self.f.synthesize(voice, text)
                        call.meter("tts_chars", len(text))
                        trace("tts_synth", voice=voice, chars=len(text), audio_ms=round(len(pcm) / 2 / rate
                              * 1000), ms=round((time.monotonic() - started) * 1000, 1))
                        reply.marks.setdefault("first_audio", time.monotonic())
                        if not reply.sentences and isinstance(heard, HeardTurn) and not await self._commit(heard):
                            reply.superseded = True  # the caller went on talking: a longer turn is coming
                            return
                        reply.marks.setdefault("play", time.monotonic())
                        reply.sentences.append(text)
                        reply.voices.append(voice)
                        reply.played.append(asyncio.ensure_future(call.enqueue(pcm, rate)))
                elif isinstance(part, Act):
                    await asyncio.gather(*reply.played)  # finish speaking before acting
                    await self._act(call, part)
            if reply.played:
                await asyncio.gather(*reply.played)
        except asyncio.CancelledError:
            interrupted = True
            raise
        finally:
            spoken, cut = reply.heard()
            if (cut or interrupted) and isinstance(heard, HeardTurn) and self.listener is not None \
                    and heard.seq in self.listener.continued:
                reply.superseded = True  # played early, cut by the caller going on with the turn: a longer one comes
            if reply.superseded:
                self.brain.retract()
                self.transcript.pop()
            else:
                self.brain.heard(spoken, cut or interrupted)
                if spoken:
                    self.transcript.append(("assistant", " ".join(spoken) + (" …" if cut or interrupted else "")))
            if isinstance(self.brain, LlmBrain) and self.brain.first_token_at is not None:
                reply.marks["llm_first_token"] = self.brain.first_token_at
            if isinstance(heard, HeardTurn):
                call.record_turn(_turn_record(heard, reply, t0, cut or interrupted, spoken,
                                              commit_wait_ms(self.cfg.turn, heard.transcript)))
            elif isinstance(heard, str) and reply.sentences:
                call.record_turn({"backend": "cascaded", "dtmf": heard, "reply": " ".join(reply.sentences)[:300],
                                  "heard": " ".join(spoken)[:300], "interrupted": cut or interrupted})

    async def _commit(self, heard: HeardTurn) -> bool:
        """Wait until the caller's pause has lasted `commit_complete_ms` when the transcript reads as a complete
        sentence, else `commit_ms`; False if the caller resumed the turn meanwhile. (A turn that reads as unfinished
        already waited `hold_ms` of silence to end, so its reply plays when ready.) Until `commit_ms`, the caller's
        speech still continues the turn: the barge-in cuts the early reply, which is then dropped like a late one."""
        listener = self.listener
        assert listener is not None
        commit_at = heard.speech_end + commit_wait_ms(self.cfg.turn, heard.transcript) / 1000.0
        await asyncio.sleep(commit_at - time.monotonic())  # to the moment, not the next poll after it
        while (fate := reply_fate(heard.seq, listener.ended, listener.continued, listener.holding, time.monotonic(),
                                  commit_at)) == "wait":
            await asyncio.sleep(0.01)
        if fate == "drop":
            return False
        if listener.ended == heard.seq:  # else a later turn is the open one; an early reply leaves it open to commit_ms
            listener.commit(heard.speech_end + self.cfg.turn.commit_ms / 1000.0)
        return True

    async def _act(self, call: CallControl, act: Act) -> None:
        if act.action == "transfer":
            if await call.transfer(act.arg):
                self._hangup_requested = True
            else:  # the gateway refused the target (toll-fraud guard): say so, the conversation goes on
                for voice, text in self._voice_runs(self.cfg.transfer_refused):
                    pcm, rate = await self.f.synthesize(voice, text)
                    call.meter("tts_chars", len(text))
                    await call.enqueue(pcm, rate)
        elif act.action == "hangup":
            await call.hangup("agent")
            self._hangup_requested = True
        elif act.action == "dtmf":
            await call.send_dtmf(act.arg)
        elif act.action in ("pause_recording", "resume_recording"):
            call.pause_recording(act.action == "pause_recording")


def commit_wait_ms(turn: TurnConfig, transcript: Transcript) -> int:
    """The silence after the caller's speech before a reply to `transcript` plays."""
    if reads_as(transcript.text, transcript.confidence) == "complete":
        return turn.commit_complete_ms
    return turn.commit_ms


async def _parts(*parts: Part) -> AsyncIterator[Part]:
    for p in parts:
        yield p


def _turn_record(heard: HeardTurn, reply: _Reply, t0: float, interrupted: bool, spoken: list[str],
                 commit_wait: int) -> dict[str, Any]:
    end = heard.speech_end

    def ms(t: float | None) -> float | None:
        return None if t is None else round((t - end) * 1000, 1)

    tr = heard.transcript
    timing = heard.final_timing
    return {
        "backend": "cascaded", "text": tr.text, "language": tr.language, "confidence": tr.confidence,
        "speech_s": round(end - heard.start, 2), "asr_passes": heard.passes,
        "endpoint_ms": ms(heard.endpoint_at), "asr_final_ms": ms(heard.final_at), "brain_start_ms": ms(t0),
        **({f"asr_{k}": v for k, v in timing.ms().items()} if timing is not None
           else dict.fromkeys(("asr_wait_ms", "asr_run_ms", "asr_cpu_ms"))),
        "first_part_ms": ms(reply.marks.get("first_part")), "first_audio_ms": ms(reply.marks.get("first_audio")),
        "play_ms": ms(reply.marks.get("play")), "first_rtp_ms": ms(reply.first_rtp()),
        "commit_wait_ms": commit_wait,
        "llm_first_token_ms": ms(reply.marks.get("llm_first_token")), "barge_in_ms": ms(reply.marks.get("barge_in")),
        "barge_in_onset_ms": ms(reply.marks.get("barge_in_onset")),
        "reply": " ".join(reply.sentences)[:300], "voices": list(dict.fromkeys(reply.voices)),
        "heard": " ".join(spoken)[:300], "interrupted": interrupted,
        "continued": heard.continued, "superseded": reply.superseded,
        "segments": [[seg.language, seg.text] for seg in tr.segments] if len(tr.segments) > 1 else None,
    }


TTS_CACHE = 256


def _fixed_lines(cfg: CascadedAgentConfig) -> list[str]:
    """Sentences of the dialog's replies and prompts that have no placeholders."""
    d = cfg.dialog
    texts = [d.greeting, *(i.reply for i in d.intents.values()),
             *(slot.prompt for i in d.intents.values() for slot in i.slots)]
    out: list[str] = []
    for text in texts:
        splitter = SentenceSplitter()
        out.extend(t for t in [*splitter.feed(text), *splitter.flush()] if "{" not in t)
    return out


def _render(voice: str, text: str) -> tuple[bytes, int]:
    return for_playout(*engine_for(voice).synthesize(text)), SAMPLE_RATE


class CascadedFactory(AgentFactory):
    _workers: dict[EngineSpec, AsrWorker] = {}

    def __init__(self, name: str, cfg: CascadedAgentConfig, tools: Mapping[str, ToolConfig] | None = None,
                 where: tuple[str, ...] | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.where = where if where is not None else ("agents", name)
        """The config path of `cfg`, for errors that name the option at fault (EngineLoadError)."""
        self.tools = {n: t for n, t in (tools or {}).items() if n in cfg.business_tools}
        self.asr: AsrWorker | None = None
        self._tts: OrderedDict[tuple[str, str], tuple[bytes, int]] = OrderedDict()

    async def prepare(self) -> None:
        """Start (or share) the ASR worker and load the voices; EngineLoadError names the option of one that fails."""
        for loc, voice in self.cfg.voice_options():  # the quick part first
            try:
                await asyncio.to_thread(load_voice, voice)
            except TtsError as e:
                raise EngineLoadError((*self.where, *loc), str(e)) from None
        spec = self.cfg.asr.spec()
        worker = CascadedFactory._workers.get(spec)
        if worker is None:  # registered before it starts: factories prepared together share one worker
            worker = CascadedFactory._workers[spec] = AsrWorker(spec)
            try:
                await worker.start()
            except AsrError as e:
                del CascadedFactory._workers[spec]
                raise EngineLoadError((*self.where, "asr", self.cfg.asr.model_option), str(e)) from None
        elif not await worker.started():
            raise EngineLoadError((*self.where, "asr", self.cfg.asr.model_option),
                                  f"{spec.engine}: the shared ASR worker failed to start")
        self.asr = worker
        await warm([voice for _, voice in self.cfg.voice_options()])
        if self.cfg.llm is None:  # the dialog's fixed lines, rendered before the first call
            for text in _fixed_lines(self.cfg):
                pcm, rate = await asyncio.to_thread(synthesize_fixed, self.cfg.voice, text)
                self._tts[(self.cfg.voice, text)] = (for_playout(pcm, rate), SAMPLE_RATE)

    async def synthesize(self, voice: str, text: str) -> tuple[bytes, int]:
        """TTS audio for one sentence, ready to play (`for_playout`); the last `TTS_CACHE` sentences are kept
        (dialog lines repeat)."""
        key = (voice, text)
        hit = self._tts.get(key)
        if hit is not None:
            self._tts.move_to_end(key)
            return hit
        out = await asyncio.to_thread(_render, voice, text)
        self._tts[key] = out
        if len(self._tts) > TTS_CACHE:
            self._tts.popitem(last=False)
        return out

    async def close(self) -> None:
        for w in CascadedFactory._workers.values():
            w.close()
        CascadedFactory._workers.clear()

    def new_brain(self) -> Brain:
        llm = self.cfg.llm
        if llm is None:
            return DialogBrain(Dialog(self.cfg.dialog))
        key = os.environ.get(llm.api_key_env) if llm.api_key_env else None
        client = LlmClient(LlmConfig(llm.base_url, llm.model, key, llm.temperature, llm.max_tokens,
                                     llm.first_token_timeout_s, llm.total_timeout_s))
        return LlmBrain(client, llm.system_prompt, llm.greeting, llm.filler, llm.filler_after_s, self.cfg.apology,
                        llm.transfer_target)

    def create(self, handover: Handover | None = None) -> Agent:
        return CascadedAgent(self, handover)
