"""`voicegate simulate`: run call scripts against any SIP target and report pass/fail with timings.

Without `--calls`, one pjsua2 phone runs each script once, one after another. With `--calls N`, phone processes
place N calls, `--concurrency` at a time and at most `--rate` per second, and the report adds percentiles over all
calls. A phone is one pjsua2 endpoint (one per process, pjsua's rule) and holds up to `--calls-per-phone` calls at
once (at most 4, the wheel's compiled limit, DESIGN §2), so 14 concurrent calls take 4 processes. Each call has its
own port, runner and report: one loop polls the phone and advances each call (`CallRun`). With `--duration S` as
well, no call starts after S seconds (a phone starts its next call as soon as a slot is free, so a rate above
concurrency / call length keeps the concurrency steady: a soak).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import secrets
import sys
import time
import wave
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pjsua2 as pj
from pydantic import BaseModel, ValidationError

from agents.speech.asr import AsrError
from agents.speech.tts import synthesize_fixed
from media.emodel import line_quality as estimate
from media.frames import SAMPLE_RATE, level_dbfs
from media.resample import resample
from media.wavfile import WavError, read_wav_16k
from telephony.config import ConfigError
from telephony.endpoint import EXPECTED_MAX_CALLS
from telephony.simulator.impair import ImpairError
from telephony.simulator.listen import PAD_FRAMES, Ear, ear_for
from telephony.simulator.persona import Mouth, PersonaLine, Verdict
from telephony.simulator.phone import Phone, PhoneCall, RtpStats
from telephony.simulator.progress import Progress
from telephony.simulator.relay_tls import TlsOptions, is_tls
from telephony.simulator.report import CallReport, audio_runs, console, html, junit, summary
from telephony.simulator.runner import (
    Action,
    AskJudge,
    AskPersona,
    HangUp,
    Heard,
    Observation,
    ScriptRunner,
    SendDtmf,
    SetEcho,
    SetNoise,
    Speak,
    Transcribe,
)
from telephony.simulator.script import Script, Speech, load_script, uses_asr
from telephony.simulator.shaper import LineImpairment
from telephony.sip_trace import trace_path

NO_IMPAIRMENT = LineImpairment()
HANGUP_WAIT_S = 5.0
"""How long a call may take to end after the phone hung up, before its report is written anyway."""


class SimulationError(Exception):
    """A script cannot run (a WAV that does not load, no target): names the script."""


def render_speech(sp: Speech, base: Path) -> bytes:
    """16 kHz PCM of what the caller says."""
    if sp.play is not None:
        path = (base / sp.play) if not Path(sp.play).is_absolute() else Path(sp.play)
        try:
            return read_wav_16k(path)
        except WavError as e:
            raise SimulationError(str(e)) from None
    assert sp.say is not None
    pcm, rate = synthesize_fixed(sp.voice, sp.say)
    return resample(pcm, rate)


def error_text(e: Exception) -> str:
    """What went wrong, for a report: pjsua2's errors say it in `info()` (their repr names only a SWIG object)."""
    return f"pjsua: {e.info()}" if isinstance(e, pj.Error) else repr(e)


def _observe(call: PhoneCall) -> Observation:
    p = call.port
    with p.lock:
        return Observation(
            now=time.monotonic(), frame=len(p.rx) - 1, last_audio=p.last_audio, audio_run=p.audio_run,
            speaking=bool(p.queue), speech_start=p.speech_start, speech_end=p.speech_end,
            answered=call.confirmed_at is not None, ended=call.ended, status=call.status,
            refer_to=tuple(call.refer_to),
        )


def write_stereo(path: Path, sent: list[bytes], heard: list[bytes]) -> None:
    """Caller on the left channel, what it heard on the right, on one frame clock."""
    n = min(len(sent), len(heard))
    left = np.frombuffer(b"".join(sent[:n]), dtype="<i2")
    right = np.frombuffer(b"".join(heard[:n]), dtype="<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.column_stack([left, right]).astype("<i2").tobytes())


def _ears(script: Script) -> dict[str, Ear]:
    """The loaded ASR engines of the script's `expect_speech` steps (loaded before the call, once per process)."""
    try:
        return {engine: ear_for(engine) for engine in uses_asr(script)}
    except AsrError as e:
        raise SimulationError(f"expect_speech cannot load its ASR: {e}") from None


def _transcribe(ears: dict[str, Ear], call: PhoneCall, t: Transcribe) -> Future[Heard]:
    with call.port.lock:
        frames = call.port.rx[max(0, t.start - PAD_FRAMES) : t.end + 1 + PAD_FRAMES]
    return ears[t.engine].submit(b"".join(frames))


def line_quality(stats: RtpStats | None, codec: str) -> dict[str, float | None] | None:
    """The statistics with the E-model's estimate for what the caller heard (media.emodel.line_quality)."""
    if stats is None:
        return None
    return {**asdict(stats), **estimate(codec, stats.rx_loss_pct, stats.rtt_ms, stats.jbuf_delay_ms)}


class CallRun:
    """One script on one call, advanced by `step()` after each poll of the phone, so that one phone can run several
    at once: each has its own port (tracks, RTP statistics, recording), runner, transcription and persona line."""

    def __init__(self, phone: Phone, script: Script, file: str, target: str, record: Path | None = None,
                 impair: tuple[LineImpairment, str] | None = None, seed: int = 0, trace: Path | None = None) -> None:
        """Render the script's speech and dial; `impair` (line, seed) impairs its RTP through a seeded relay; `seed`
        (the run's) goes to the persona's model and into the report; `trace`: the folder for the phone's trace of
        the call if it fails (a Phone made with `trace`)."""
        base = Path(file).resolve().parent
        self.phone, self.script, self.record, self.trace = phone, script, record, trace
        self._render: Callable[[Speech], bytes] = lambda sp: render_speech(sp, base)
        self.runner = ScriptRunner(script, self._render)
        self.ears = _ears(script)
        self.asr: Future[Heard] | None = None
        self.mouth: Mouth | None = None
        self.line: Future[PersonaLine] | None = None
        self.verdict: Future[Verdict] | None = None
        phone.set_codecs(script.codecs)
        try:
            self.call = phone.dial(target, script.dial, impair)
        except ImpairError as e:
            raise SimulationError(str(e)) from None
        self.seed = seed
        self.report = CallReport(script.name, file, target, 0, script.expect_status, None, "", 0.0,
                                 started=time.time(), phone=os.getpid(), seed=seed)
        self._closing_until: float | None = None
        """Once the script is over: how long the call may take to end after the hang-up."""
        self._settle = 5
        """Polls between the end of the call and its release (pjsua finishes with the call)."""
        self.done = False
        """The report is complete and the call released."""

    def step(self) -> None:
        """Take what the phone observed since the last poll and carry out what the runner asks."""
        if self._closing_until is not None:
            self._close()
            return
        call, runner = self.call, self.runner
        o = _observe(call)
        if self.asr is not None and self.asr.done():
            runner.hear(self.asr.result())
            self.asr = None
        if self.line is not None and self.line.done():
            runner.persona_said(self.line.result())
            self.line = None
        if self.verdict is not None and self.verdict.done():
            runner.judged(self.verdict.result())
            self.verdict = None
        if not o.answered:
            if o.ended:
                self._end()
            elif o.now - call.started > self.script.answer_timeout_s:
                self.report.error = f"no answer within {self.script.answer_timeout_s} s"
                self._end()
            return
        for action in runner.tick(o):
            self._act(action)
        if runner.done:
            self._end()
        elif o.ended and not (runner.transcribing or runner.judging):  # what was said is still checked
            runner.abort("the call ended")
            self._end()
        elif o.now - call.started > self.script.max_duration_s:
            runner.abort(f"the call passed max_duration_s={self.script.max_duration_s}")
            self._end()

    def fail(self, error: Exception) -> None:
        """An error of this call's own (the others go on): in its report, and the call hung up."""
        self.report.error = error_text(error)
        if self._closing_until is None:
            self._end()
        else:
            self.done = True  # it failed while closing: give up on a clean release

    def _act(self, action: Action) -> None:
        call, phone = self.call, self.phone
        if isinstance(action, Speak):
            call.port.speak(action.frames)
        elif isinstance(action, SendDtmf):
            phone.send_dtmf(call, action.digits, action.info)
        elif isinstance(action, SetEcho):
            call.port.set_echo(action.gain, action.delay_frames)
        elif isinstance(action, SetNoise):
            call.port.set_noise(action.samples)
        elif isinstance(action, HangUp):
            phone.hangup(call)
        elif isinstance(action, Transcribe):
            self.asr = _transcribe(self.ears, call, action)
        elif isinstance(action, AskPersona):
            self.mouth = self.mouth or Mouth(self._render, self.seed)
            self.line = self.mouth.submit(action.step.persona, action.request)
        elif isinstance(action, AskJudge):
            self.mouth = self.mouth or Mouth(self._render, self.seed)
            self.verdict = self.mouth.judge(action.step.persona, action.request)

    def _end(self) -> None:
        """The script is over: hang up (if the call is still up) and wait for pjsua to finish it (`_close`)."""
        if self.mouth is not None:
            self.mouth.close()
        if not self.call.confirmed_at and self.script.expect_status == 200:
            self.runner.abort(f"the call was not answered ({self.call.status} {self.call.reason})"
                              if self.call.status else "the call was not answered")
        self.phone.hangup(self.call)
        self._closing_until = time.monotonic() + HANGUP_WAIT_S

    def _close(self) -> None:
        call = self.call
        assert self._closing_until is not None
        if not call.ended and time.monotonic() < self._closing_until:
            return
        if self._settle > 0:
            self._settle -= 1
            return
        self.phone.release(call)
        report = self.report
        report.status = call.status if call.confirmed_at is None else 200
        report.answer_s = round(call.confirmed_at - call.started, 3) if call.confirmed_at else None
        report.codec = call.codec
        report.call_id = call.call_id
        report.duration_s = round(time.monotonic() - call.started, 3)
        report.steps = self.runner.results
        with call.port.lock:
            sent, heard = list(call.port.tx), list(call.port.rx)
            port = call.port
            cut = [(port.speech_start, len(sent) - 1)] if port.queue and port.speech_start is not None else []
            report.caller_speech, flags = [*port.utterances, *cut], bytes(port.heard_audio)  # cut: by the hang-up
        report.agent_audio = audio_runs(flags)
        report.rtp = line_quality(call.rtp, call.codec)
        report.impairment = call.impairment
        report.sent_db = [round(level_dbfs(f), 1) for f in sent]
        report.heard_db = [round(level_dbfs(f), 1) for f in heard]
        if self.record is not None:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            write_stereo(self.record, sent, heard)
        text = self.phone.trace_of(call)
        if self.trace is not None and text and not report.passed:
            self.trace.mkdir(parents=True, exist_ok=True)
            trace_path(self.trace, call.call_id or f"no-call-id-{os.getpid()}-{int(call.wall_started)}").with_suffix(
                ".log").write_text(text)
        # The phone alone holds the Call object now and destroys it once no later call has its pjsua call id
        # (Phone._sweep): its destructor would clear that call's user data and hang it up.
        del call, self.call
        self.done = True


def run_call(phone: Phone, script: Script, file: str, target: str, record: Path | None = None,
             impair: tuple[LineImpairment, str] | None = None, seed: int = 0, trace: Path | None = None) -> CallReport:
    """One script on one call; `impair` (line, seed) impairs its RTP through a seeded relay."""
    run = CallRun(phone, script, file, target, record, impair, seed, trace)
    while not run.done:
        phone.poll(10)
        run.step()
    return run.report


def _recording(record_dir: Path | None, index: int, script: Script) -> Path | None:
    if record_dir is None:
        return None
    safe = "".join(c if c.isalnum() else "-" for c in script.name)[:40]
    return record_dir / f"{index + 1:04d}-{safe}.wav"


def call_impairment(line: LineImpairment, script: Script, seed: int, index: int) -> tuple[LineImpairment, str] | None:
    """The impairment of the `index`-th call (the command line's, else the script's `network:`): what it drops and
    delays depends on the seed and the index alone."""
    chosen = line if line.active else script.network
    return (chosen, f"{seed}:{index}") if chosen is not None and chosen.active else None


def _impairs(line: LineImpairment, scripts: list[tuple[str, Script]]) -> bool:
    return line.active or any(s.network is not None and s.network.active for _, s in scripts)


def _worker(jobs: Any, results: Any, clock: Any, rate: float, target: str | None, rtp_port: int,
            line: LineImpairment, impair: bool, seed: int, record_dir: Path | None, tls: TlsOptions | None,
            slots: int, trace: Path | None = None) -> None:
    """One load process: its own phone with up to `slots` calls at once, jobs taken from the queue while a slot is
    free, each started no earlier than its slot in time and none after the end of `--duration`. `clock` is (ready,
    go, times): the process says it is ready, and once every one is (or after a minute), `times` holds the run's
    start and end on the monotonic clock (end 0: none)."""
    ready, go, times = clock
    phone = Phone(rtp_port, impair=impair, tls=tls, trace=trace is not None)
    ready.release()
    go.wait()
    t0, until = times[0], times[1] or None
    running: list[CallRun] = []
    waiting: tuple[int, str, Script] | None = None
    """The next job, taken when a slot was free, until its start time."""
    more = True
    try:
        while running or waiting is not None or more:
            if more and waiting is None and len(running) < slots:
                with contextlib.suppress(queue.Empty):  # with calls up, no job yet: ask again after the next poll
                    waiting = jobs.get(timeout=0.001 if running else None)
                    more = waiting is not None
            if waiting is not None and until is not None and time.monotonic() >= until:
                waiting, more = None, False
            if waiting is not None and time.monotonic() >= t0 + waiting[0] / rate and phone.can_dial():
                index, path, script = waiting
                waiting = None
                try:
                    running.append(CallRun(phone, script, path, target or script.target or "",
                                           _recording(record_dir, index, script),
                                           call_impairment(line, script, seed, index), seed, trace))
                except Exception as e:  # a failed call is a result, not the end of the run
                    results.put(CallReport(script.name, path, target or script.target or "", 0, script.expect_status,
                                           None, "", 0.0, error=error_text(e), phone=os.getpid(), seed=seed))
            phone.poll(10)
            for run in running:
                try:
                    run.step()
                except Exception as e:
                    run.fail(e)
            for run in [r for r in running if r.done]:
                running.remove(run)
                results.put(run.report)
    finally:
        phone.close()


def run_load(scripts: list[tuple[str, Script]], target: str | None, calls: int, concurrency: int, rate: float,
             rtp_port: int, line: LineImpairment = NO_IMPAIRMENT, record_dir: Path | None = None,
             seed: int = 0, duration_s: float | None = None, tls: TlsOptions | None = None,
             per_phone: int = EXPECTED_MAX_CALLS, trace: Path | None = None) -> list[CallReport]:
    """`calls` runs of the scripts (in turn), `concurrency` at a time, started at most `rate` per second, from phone
    processes of `per_phone` calls each (the last one takes the rest); with `duration_s`, only those that start
    within that many seconds; with `trace`, each failed call's SIP messages and pjsua log go into that folder."""
    slots = [min(per_phone, concurrency - k) for k in range(0, concurrency, per_phone)]
    ctx = multiprocessing.get_context("spawn")
    jobs = ctx.Queue()
    results = ctx.Queue()
    for i in range(calls):
        path, script = scripts[i % len(scripts)]
        jobs.put((i, path, script))
    for _ in slots:
        jobs.put(None)
    jobs.cancel_join_thread()  # jobs left when --duration ends the run are dropped, not waited for at exit
    ready, go, times = ctx.Semaphore(0), ctx.Event(), ctx.Array("d", 2)
    procs = [ctx.Process(target=_worker, args=(jobs, results, (ready, go, times), rate, target, rtp_port + 200 * k,
                                               line, _impairs(line, scripts), seed, record_dir, tls, n, trace),
                          daemon=True)
             for k, n in enumerate(slots)]
    for p in procs:
        p.start()
    waiting = time.monotonic() + 60
    for _ in procs:  # the phones take seconds to start: the rate and --duration count from when they are up
        if not ready.acquire(timeout=max(0.0, waiting - time.monotonic())):
            break
    times[0] = time.monotonic() + 0.2
    times[1] = times[0] + duration_s if duration_s is not None else 0.0
    go.set()
    reports: list[CallReport] = []
    limit = max(s.max_duration_s + s.answer_timeout_s for _, s in scripts) + 30
    last = time.monotonic()
    progress = Progress(calls, sys.stderr)
    while len(reports) < calls:
        try:
            reports.append(results.get(timeout=1.0))
        except queue.Empty:
            if not any(p.is_alive() for p in procs):  # --duration is over: take what they flushed before exiting
                with contextlib.suppress(queue.Empty):
                    while len(reports) < calls:
                        reports.append(results.get(timeout=0.5))
                break
            if time.monotonic() - last > limit:
                print(f"voicegate simulate: no call finished within {limit:.0f} s; stopping", file=sys.stderr)
                break
            continue
        last = time.monotonic()
        progress.call_done(reports[-1].passed)
    progress.close()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    return reports



def _not_run(invalid: list[tuple[str, list[str]]], junit_path: str | None, ran: list[CallReport] | None = None) -> int:
    """Scripts that cannot run: their errors on stderr and, with --junit, as failed test cases (after the calls
    that `ran` before one of them stopped the run); exit status 2."""
    for _, errors in invalid:
        for error in errors:
            print(error, file=sys.stderr)
    print(f"voicegate simulate: {len(invalid)} script(s) with errors, {'the run stopped' if ran else 'nothing run'}",
          file=sys.stderr)
    if junit_path:
        junit(ran or [], Path(junit_path), invalid)
    return 2


def main(paths: list[str], target: str | None, junit_path: str | None, json_path: str | None,
         rtp_port: int = 40000, calls: int | None = None, concurrency: int = 1, rate: float = 1.0,
         html_path: str | None = None, loss_pct: float = 0.0, record_dir: str | None = None,
         seed: int | None = None, jitter_ms: float = 0.0, reorder_pct: float = 0.0, skew_ppm: float = 0.0,
         duration_s: float | None = None, tls: TlsOptions | None = None,
         per_phone: int = EXPECTED_MAX_CALLS, trace_dir: str | None = None) -> int:
    try:
        line = LineImpairment(loss_pct=loss_pct, jitter_ms=jitter_ms, reorder_pct=reorder_pct, skew_ppm=skew_ppm)
    except ValidationError as e:
        for err in e.errors():
            print(f"voicegate simulate: --{str(err['loc'][0]).split('_')[0]}: {err['msg']}", file=sys.stderr)
        return 2
    scripts: list[tuple[str, Script]] = []
    invalid: list[tuple[str, list[str]]] = []
    for path in paths:
        try:
            s = load_script(path)
        except ConfigError as e:
            invalid.append((path, [str(issue) for issue in e.issues]))
            continue
        scripts.append((path, s))
        if not (target or s.target):
            invalid.append((path, [f"{path}: no target: give --target or `target:` in the script"]))
        elif tls is None and is_tls(target or s.target or ""):
            invalid.append((path, [f"{path}: {target or s.target} is a TLS target: give --tls-ca FILE (the CA that "
                                   "signs its certificate) or --insecure"]))
    if invalid:
        return _not_run(invalid, junit_path)
    reports: list[CallReport] = []
    rec = Path(record_dir) if record_dir else None
    trace = Path(trace_dir) if trace_dir else None
    if seed is None:
        seed = secrets.randbelow(2**31)
    print(f"voicegate simulate: seed {seed} (--seed {seed} repeats the line's impairment and the persona's requests)",
          file=sys.stderr)
    if calls is not None:
        reports = run_load(scripts, target, calls, concurrency, rate, rtp_port, line, rec, seed, duration_s, tls,
                           per_phone, trace)
    else:
        phone = Phone(rtp_port, impair=_impairs(line, scripts), tls=tls, trace=trace is not None)
        try:
            for i, (path, s) in enumerate(scripts):
                uri = target or s.target
                assert uri is not None
                try:
                    reports.append(run_call(phone, s, path, uri, _recording(rec, i, s),
                                            call_impairment(line, s, seed, i), seed, trace))
                except SimulationError as e:
                    return _not_run([(path, [f"{path}: {e}"])], junit_path, reports)
        finally:
            phone.close()
    print(console(reports) if calls is None else summary(reports))
    if junit_path:
        junit(reports, Path(junit_path))
    if html_path:
        html(reports, Path(html_path), load=calls is not None)
    if json_path:
        rows = [asdict(r) | {"passed": r.passed, "false_barge_ins": r.false_barge_ins} for r in reports]
        Path(json_path).write_text(json.dumps(rows, indent=2, default=BaseModel.model_dump))
    return 0 if all(r.passed for r in reports) else 1
