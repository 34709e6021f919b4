"""Pipecat's own interruption path on voicegate's labelled clip set, server side, in real time (runs in .venv-bench).

Each clip runs one Pipecat pipeline: input transport -> [STT] -> user aggregator (Silero VAD, user turn strategies)
-> agent turn as TTS audio -> output transport. The output plays 40 ms chunks paced like a sound card and keeps the
chunks it sent; the input feeds 20 ms caller-side frames at real-time pace: the caller's speech, the agent audio the
output has actually sent returned as echo (delay, loss), line noise, mixed as tests/unit/sim.py does. A clip "stops
the bot" when an InterruptionFrame reaches the output while agent audio is left; reaction = end of the last chunk
sent - the caller's onset (clip set definition, 0 when the bot stopped before it). Interrupt clips run 3 s past the
clip set's window so that a transcript-gated stop is still timed; a clip not stopped by then is missed.

Why real time: Pipecat times VAD and turn state with time.time()/time.monotonic() and asyncio timers, and runs VAD,
smart-turn and STT on worker threads; a fake loop clock would desynchronise them. Clips run `--jobs` at a time, but
one at a time in rows with an STT, whose CPU time would otherwise delay the other clips' transcripts.

Usage: .venv-bench/bin/python -m bench.pipecat_compare [--clips DIR] [--rows NAME,..] [--kinds KIND,..] [--jobs N]
       [--json OUT]   (PYTHONPATH=the repo; `make bench` runs it when .venv-bench exists)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from faster_whisper import WhisperModel
from loguru import logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair, LLMUserAggregatorParams
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.whisper.stt import WhisperSTTService
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams
from pipecat.turns.user_start import MinWordsUserTurnStartStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

RATE = 16000
FRAME = 320  # 20 ms input frames
TAIL_S = 3.0
DEFAULT_CLIPS = Path(__file__).resolve().parent / "results" / "clipset"


@dataclass
class Clip:
    """One clip of the manifest with its audio loaded, and what happened when it ran."""

    kind: str
    agent: np.ndarray
    caller: np.ndarray | None
    caller_at_s: float
    caller_frame: int | None
    echo_db: float | None
    echo_delay_ms: int
    noise_snr_db: float | None
    seconds: float
    seed: int
    sent: int = 0  # agent samples the output has sent
    stopped_at: float | None = None  # monotonic time an interruption reached the output with agent audio left
    t0: float = 0.0  # monotonic time of the first chunk sent
    playing: asyncio.Event = field(default_factory=asyncio.Event)

    def frames(self) -> Iterator[bytes]:
        """Caller-side 20 ms frames as sim.simulate() mixes them; echo is read from what was sent so far."""
        rng = np.random.default_rng(self.seed)
        noise = None
        if self.noise_snr_db is not None:
            noise = 32768 * 10 ** ((_rms_db(self.agent) - self.noise_snr_db) / 20)
        start, delay = int(self.caller_at_s * 50), self.echo_delay_ms * 16
        tail = TAIL_S if self.kind == "interrupt" else 0.0
        for k in range(int((self.seconds + tail) * 50)):
            x = np.zeros(FRAME)
            if self.caller is not None and k >= start:
                seg = self.caller[(k - start) * FRAME : (k - start + 1) * FRAME]
                x[: seg.size] += seg
            lo = k * FRAME - delay
            a, b = max(lo, 0), min(lo + FRAME, self.sent, self.agent.size)
            if self.echo_db is not None and b > a:
                x[a - lo : b - lo] += self.agent[a:b] * 10 ** (self.echo_db / 20)
            if noise is not None:
                x += rng.standard_normal(FRAME) * noise
            yield np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def _rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2) / 32768.0**2 + 1e-12))


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)


def load_clips(clip_dir: Path) -> tuple[list[dict[str, Any]], str]:
    manifest = json.loads((clip_dir / "manifest.json").read_text())
    return manifest["clips"], manifest["whisper_model"]


def make_clip(spec: dict[str, Any], clip_dir: Path) -> Clip:
    caller = _read_wav(clip_dir / spec["caller"]) if spec["caller"] else None
    return Clip(spec["kind"], _read_wav(clip_dir / spec["agent"]), caller, spec["caller_at_s"], spec["caller_frame"],
                spec["echo_db"], spec["echo_delay_ms"], spec["noise_snr_db"], spec["seconds"], spec["seed"])


class ClipInput(BaseInputTransport):
    """Feeds the clip's caller-side frames at real-time pace from the moment the agent's first chunk is sent."""

    def __init__(self, clip: Clip, params: TransportParams, **kw: Any) -> None:
        super().__init__(params, **kw)
        self._clip = clip
        self.finished = asyncio.Event()

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        self.create_task(self._feed())

    async def _feed(self) -> None:
        c = self._clip
        await c.playing.wait()
        for k, pcm in enumerate(c.frames()):
            await asyncio.sleep(max(0.0, c.t0 + (k + 1) * FRAME / RATE - time.monotonic()))
            if c.stopped_at is not None and time.monotonic() - c.stopped_at > 0.2:
                break
            await self.push_audio_frame(InputAudioRawFrame(audio=pcm, sample_rate=RATE, num_channels=1))
        self.finished.set()


class ClipOutput(BaseOutputTransport):
    """Plays 40 ms chunks paced like a sound card (write, then wait out the chunk) and keeps count of what it sent."""

    def __init__(self, clip: Clip, params: TransportParams, **kw: Any) -> None:
        super().__init__(params, **kw)
        self._clip = clip
        self._due = 0.0

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        c = self._clip
        if isinstance(frame, InterruptionFrame) and c.stopped_at is None and 0 < c.sent < c.agent.size:
            c.stopped_at = time.monotonic()
        await super().process_frame(frame, direction)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        c, now = self._clip, time.monotonic()
        if not c.playing.is_set():
            c.t0, self._due = now, now
            c.playing.set()
        c.sent += len(frame.audio) // 2
        self._due += len(frame.audio) / 2 / RATE
        await asyncio.sleep(max(0.0, self._due - time.monotonic()))
        return True


class AgentTurn(FrameProcessor):
    """Stands in for a TTS that has the whole agent turn ready: pushes it as TTS audio once the pipeline starts."""

    def __init__(self, agent: np.ndarray) -> None:
        super().__init__()
        self._pcm = np.clip(np.round(agent), -32768, 32767).astype("<i2").tobytes()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(TTSStartedFrame())
            step = 2 * FRAME * 4  # 80 ms TTS chunks
            for i in range(0, len(self._pcm), step):
                await self.push_frame(TTSAudioRawFrame(self._pcm[i : i + step], sample_rate=RATE, num_channels=1))
            await self.push_frame(TTSStoppedFrame())


class SharedWhisper(WhisperSTTService):
    """Pipecat's local Whisper STT (segmented: transcribes each VAD segment), on a model loaded once for all clips."""

    def __init__(self, model: WhisperModel, **kw: Any) -> None:
        self._shared = model
        super().__init__(**kw)

    def _load(self) -> None:
        self._model = self._shared


@dataclass
class Row:
    """A Pipecat configuration: VAD params, turn-start strategies (None: Pipecat's), whether an STT runs."""

    vad: VADParams
    start: Callable[[], list[Any]] | None = None
    stt: bool = False
    note: str = ""


ROWS = {
    "pipecat defaults": Row(VADParams(), note="Silero VAD 0.7/0.2 s/vol 0.6, VAD+transcript start, smart-turn v3 stop"),
    "pipecat phone-tuned": Row(VADParams(confidence=0.8, stop_secs=0.2),
                               start=lambda: [MinWordsUserTurnStartStrategy(min_words=2)], stt=True,
                               note="VAD conf 0.8, min_words=2 on local whisper-base (segmented), smart-turn v3"),
}


async def run_clip(clip: Clip, row: Row, whisper: WhisperModel | None) -> Clip:
    def build() -> list[FrameProcessor]:
        strategies = UserTurnStrategies(start=row.start()) if row.start else None
        params = LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer(params=row.vad),
                                         user_turn_strategies=strategies)
        user = LLMContextAggregatorPair(LLMContext(), user_params=params).user()
        stt = [SharedWhisper(whisper, device="cpu", compute_type="int8")] if row.stt and whisper else []
        return [*stt, user]

    tp = TransportParams(audio_in_enabled=True, audio_in_sample_rate=RATE, audio_out_enabled=True,
                         audio_out_sample_rate=RATE)
    inp = ClipInput(clip, tp)
    middle = await asyncio.to_thread(build)  # model loads off the loop, which other clips share
    worker = PipelineWorker(Pipeline([inp, *middle, AgentTurn(clip.agent), ClipOutput(clip, tp)]),
                            params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
                            idle_timeout_secs=None, enable_rtvi=False, check_dangling_tasks=False)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await inp.finished.wait()
    await worker.cancel()
    await running
    return clip


def summarize(clips: list[Clip]) -> dict[str, Any]:
    """The clip set's row (tests/clipset.py Evaluation.row) for Pipecat; it has no pause state, so no pause columns."""
    react, missed, early = [], 0, 0
    for c in clips:
        if c.kind != "interrupt":
            continue
        assert c.caller_frame is not None
        ms = c.sent / RATE * 1000 - c.caller_frame * 20
        if c.stopped_at is None:
            missed += 1
        elif ms <= 0:
            early += 1
        else:
            react.append(ms)
    r = np.asarray(react)
    echo = [c for c in clips if c.kind == "echo"]
    bc = [c for c in clips if c.kind == "backchannel"]
    return {
        "reaction_p50_ms": round(float(np.percentile(r, 50)), 1) if r.size else float("nan"),
        "reaction_p95_ms": round(float(np.percentile(r, 95)), 1) if r.size else float("nan"),
        "missed": missed,
        "interrupt_calls": len(react) + missed + early,
        "stopped_before_onset": early,
        "echo_false_pauses": "-",
        "echo_false_stops": sum(c.stopped_at is not None for c in echo),
        "echo_calls": len(echo),
        "backchannel_stops": sum(c.stopped_at is not None for c in bc),
        "backchannel_calls": len(bc),
        "backchannel_pause_p50_ms": "-",
    }


async def run_row(name: str, row: Row, specs: list[dict[str, Any]], clip_dir: Path, jobs: int,
                  whisper: WhisperModel | None) -> dict[str, Any]:
    gate = asyncio.Semaphore(jobs)
    done = 0

    async def one(spec: dict[str, Any]) -> Clip:
        nonlocal done
        async with gate:
            clip = await run_clip(make_clip(spec, clip_dir), row, whisper)
        done += 1
        at = f"{clip.sent / RATE:.2f} s" if clip.stopped_at is not None else "not stopped"
        print(f"  {name} {done}/{len(specs)}: {clip.kind} ({clip.echo_db} dB, {clip.echo_delay_ms} ms echo): "
              f"caller onset {f'{clip.caller_frame * 0.02:.2f} s' if clip.caller_frame else '-'}, stopped {at}",
              file=sys.stderr, flush=True)
        return clip

    t = time.monotonic()
    clips = await asyncio.gather(*(one(s) for s in specs))
    return {"settings": name, **summarize(clips), "note": row.note, "wall_s": round(time.monotonic() - t, 1)}


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    specs, whisper_dir = load_clips(args.clips)
    if args.kinds:
        specs = [s for s in specs if s["kind"] in args.kinds.split(",")]
    names = args.rows.split(",") if args.rows else list(ROWS)
    whisper = None
    if any(ROWS[n].stt for n in names):
        whisper = WhisperModel(whisper_dir, device="cpu", compute_type="int8", local_files_only=True)
    rows = []
    for n in names:
        rows.append(await run_row(n, ROWS[n], specs, args.clips, 1 if ROWS[n].stt else args.jobs, whisper))
        print(f"  {rows[-1]}", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=Path, default=DEFAULT_CLIPS, help="directory written by bench.export_clipset")
    ap.add_argument("--rows", default="", help=f"comma-separated, of: {', '.join(ROWS)} (default all)")
    ap.add_argument("--kinds", default="", help="only these clip kinds: interrupt,echo,backchannel")
    ap.add_argument("--jobs", type=int, default=4, help="clips run at once")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    rows = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
