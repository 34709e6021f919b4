"""How ASR worker processes keep up with the turns of several calls at once, without SIP, pjsua2 or TTS: the real
`Listener` (turn detector, incremental passes) on each call's track, paced in real time, and the real `AsrWorker`
processes; N calls share one worker, as the calls of one media worker do. The tracks are the cascaded bench's three
questions (piper, -20 dB), every call asking at the same moment as in `bench/cascaded.py`, the worst case.

`python -m bench.asr_load [--calls 4] [--workers 1] [--partial-every-ms 600]` prints, over all turns, the endpoint
and the final transcript's delay after the end of speech (p50 / p95), the passes per turn, and each ASR process's
CPU time; `--partial-every-ms 0` turns partial passes off (only the pass at the pause).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np

from agents.base import CallerAudio
from agents.listener import HeardTurn, Listener
from agents.speech.worker import AsrWorker, EngineSpec
from agents.turn import TurnDetector, TurnSettings
from bench.run import _cpu_s, pct
from media.frames import FRAME_BYTES
from media.vad import Vad
from tests import audio

QUESTIONS = ("What are your opening hours?", "When are you open?", "What time do you close?")
FIRST_S, EVERY_S = 1.0, 6.0


def track() -> bytes:
    out = np.zeros(int(16000 * (FIRST_S + EVERY_S * len(QUESTIONS))), np.float32)
    for k, q in enumerate(QUESTIONS):
        x = audio.scale_to_db(audio.trim(audio.piper(q)), -20.0)
        at = int((FIRST_S + EVERY_S * k) * 16000)
        out[at : at + len(x)] = x
    return audio.to_pcm(out)


class _Line:
    """A call's inbound audio as `Listener` reads it: one frame every 20 ms of the clock, from `t0`."""

    def __init__(self, call_id: str, pcm: bytes, t0: float) -> None:
        self.call_id = call_id
        self._frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]
        self._t0 = t0
        self._i = 0
        self._vad = Vad(2)
        self.done = asyncio.Event()

    async def listen(self) -> CallerAudio:
        if self._i >= len(self._frames):
            self.done.set()
            await asyncio.Event().wait()  # the call is over: nothing more comes
        t = self._t0 + self._i * 0.02
        await asyncio.sleep(max(0.0, t - time.monotonic()))
        frame = self._frames[self._i]
        self._i += 1
        return CallerAudio(t, frame, self._vad.is_speech(frame))


async def run(calls: int, workers: int, partial_every_ms: int, spec: EngineSpec) -> dict[str, object]:
    pool = [AsrWorker(spec) for _ in range(workers)]
    await asyncio.gather(*(w.start() for w in pool))
    pids = [w.pid for w in pool]
    cpu0 = [_cpu_s(pid) for pid in pids]
    pcm = track()
    t0 = time.monotonic() + 0.5
    every = partial_every_ms if partial_every_ms > 0 else 10**6
    lines = [_Line(f"call{i}", pcm, t0) for i in range(calls)]
    listeners = [Listener(line, pool[i % workers], TurnDetector(TurnSettings(partial_every_ms=every)))  # type: ignore[arg-type]
                 for i, line in enumerate(lines)]
    tasks = [asyncio.create_task(lst.run()) for lst in listeners]
    await asyncio.gather(*(line.done.wait() for line in lines))
    await asyncio.sleep(3.0)  # the last turns' finals
    for t in tasks:
        t.cancel()
    cpu = [round(_cpu_s(pid) - c, 2) for pid, c in zip(pids, cpu0, strict=True)]
    for w in pool:
        w.close()
    heard: list[HeardTurn] = []
    for lst in listeners:
        while not lst.heard.empty():
            heard.append(lst.heard.get_nowait())
    endpoint = [(h.endpoint_at - h.speech_end) * 1000 for h in heard]
    final = [(h.final_at - h.speech_end) * 1000 for h in heard]
    return {"calls": calls, "workers": workers, "partial_every_ms": partial_every_ms, "engine": spec.engine,
            "turns": len(heard), "expected_turns": calls * len(QUESTIONS),
            "endpoint_p50_ms": pct(endpoint, 50), "endpoint_p95_ms": pct(endpoint, 95),
            "asr_final_p50_ms": pct(final, 50), "asr_final_p95_ms": pct(final, 95),
            "passes_per_turn": round(float(np.mean([h.passes for h in heard])), 1) if heard else 0,
            "asr_cpu_s": cpu, "texts": sorted({h.transcript.text for h in heard}),
            "load": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--partial-every-ms", type=int, default=TurnSettings().partial_every_ms)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads of each moonshine process")
    ap.add_argument("--out", type=Path, help="append the result as a JSON line to this file")
    a = ap.parse_args()
    spec = EngineSpec("moonshine", (("model_dir", None), ("threads", a.threads)))
    result = asyncio.run(run(a.calls, a.workers, a.partial_every_ms, spec))
    print(json.dumps(result))
    if a.out is not None:
        with a.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
