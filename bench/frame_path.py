"""CPU of the Python frame path per call-second, replayed without a clock (a sans-IO micro-benchmark).

Each scenario feeds one call's 20 ms frames through the real `CallMediaPort` callbacks, in the bridge's order (a
frame requested, then one received, every tick), with pjsua2 `MediaFrame`s filled the way pjsua2's port fills them:
- `echo`: the echo agent (loopback), the caller's speech coming in;
- `agent`: an agent prompt playing, its echo coming back 200 ms later 12 dB down with line noise (VAD, barge-in
  detector, echo path estimator and tone rejector all at work);
- `copy port`: the baseline, in the same run: a Python port that only copies each received frame back through the
  same buffers, the floor of any Python port.
CPU is `time.process_time` (this process's CPU time, not wall time, so other work on the machine barely moves it),
the least of `repeats` runs. Not in these figures: the C++ -> Python upcall and GIL hand-over around each callback,
which are the same for every Python port.

Usage: python -m bench.frame_path [--seconds S] [--profile agent|echo] [--json PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pjsua2 as pj

from media.frames import FRAME_BYTES, FRAME_SAMPLES, SAMPLE_RATE, SILENCE
from media.pipeline import CallMedia
from telephony.media_port import CallMediaPort, FrameWriter, read_frame
from tests import audio, clipset

_AUDIO = pj.PJMEDIA_FRAME_TYPE_AUDIO


class _CopyPort(pj.AudioMediaPort):  # type: ignore[misc]
    """The baseline: each received frame goes back out on the next request, through the same frame access."""

    def __init__(self) -> None:
        super().__init__()
        self._last = SILENCE
        self._writer = FrameWriter()

    def onFrameReceived(self, frame: Any) -> None:  # noqa: N802 (pjsua2's name)
        self._last = read_frame(frame) or SILENCE

    def onFrameRequested(self, frame: Any) -> None:  # noqa: N802
        self._writer.write(frame, self._last)


def _received(pcm: bytes) -> Any:
    f = pj.MediaFrame()
    f.type = _AUDIO
    f.buf = pj.ByteVector(pcm)
    f.size = len(pcm)
    return f


def _requested() -> Any:
    f = pj.MediaFrame()
    f.size = FRAME_BYTES  # pjsua2's get_frame hands over an empty buffer and the size the bridge wants
    return f


def _frames(x: np.ndarray, n: int) -> list[bytes]:
    x = np.concatenate([x, np.zeros(max(0, n * FRAME_SAMPLES - x.size))])[: n * FRAME_SAMPLES]
    pcm = audio.to_pcm(x)
    return [pcm[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] for i in range(n)]


def _run(port: Any, inbound: list[bytes]) -> float:
    """CPU seconds of one replay of `inbound` through `port`, a frame requested before each one received."""
    received = [_received(f) for f in inbound]
    requested = [_requested() for _ in inbound]
    c0 = time.process_time()
    for rq, rx in zip(requested, received, strict=True):
        port.onFrameRequested(rq)
        port.onFrameReceived(rx)
    return time.process_time() - c0


def scenarios(seconds: float) -> dict[str, Callable[[], float]]:
    """Each scenario as a function that builds a fresh port and returns the CPU seconds of one replay."""
    n = int(seconds * SAMPLE_RATE / FRAME_SAMPLES)
    agent = np.concatenate(clipset.agent_turns())
    caller = np.concatenate(clipset.caller_utterances()[:6])
    rng = np.random.default_rng(0)
    delay = 200 * SAMPLE_RATE // 1000
    echo = np.concatenate([np.zeros(delay), agent])[: agent.size] * 10 ** (-12 / 20)
    noise = rng.standard_normal(echo.size) * 32768 * 10 ** ((audio.rms_db(agent) - 30) / 20)
    agent_in = _frames(echo + noise, n)
    caller_in = _frames(caller, n)
    agent_pcm = audio.to_pcm(agent[: n * FRAME_SAMPLES])

    def echo_call() -> float:
        port = CallMediaPort()
        port.media = CallMedia(lambda e: None)
        port.media.set_loopback(True)
        return _run(port, caller_in)

    def agent_call() -> float:
        port = CallMediaPort()
        port.media = CallMedia(lambda e: None)
        port.media.push(agent_pcm, item=1)
        return _run(port, agent_in)

    def copy_port() -> float:
        return _run(_CopyPort(), caller_in)

    return {"echo": echo_call, "agent": agent_call, "copy port": copy_port}


def measure(seconds: float = 10.0, repeats: int = 5) -> dict[str, Any]:
    """Microseconds of CPU per call-second for each scenario, and each one's ratio to the copy port's."""
    runs = scenarios(seconds)
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so a busy moment on the machine touches every scenario alike
        for name, fn in runs.items():
            cpu[name].append(fn())
    us = {name: round(min(v) * 1e6 / seconds, 1) for name, v in cpu.items()}
    base = us["copy port"]
    return {"seconds": seconds, "repeats": repeats, "us_per_call_s": us,
            "ratio_to_copy_port": {k: round(v / base, 2) for k, v in us.items() if k != "copy port"}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--profile", choices=["echo", "agent"], help="cProfile one replay of this scenario instead")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    ep = pj.Endpoint()  # ports unregister from an endpoint when freed (without one pjsua2 prints an error each)
    ep.libCreate()
    ec = pj.EpConfig()
    ec.logConfig.level = ec.logConfig.consoleLevel = 0
    ep.libInit(ec)
    try:
        return _main(a)
    finally:
        gc.collect()
        ep.libDestroy()


def _main(a: argparse.Namespace) -> int:
    if a.profile:
        fn = scenarios(a.seconds)[a.profile]
        prof = cProfile.Profile()
        prof.runcall(fn)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    out = measure(a.seconds)
    for name, v in out["us_per_call_s"].items():
        ratio = out["ratio_to_copy_port"].get(name)
        print(f"{name:<10} {v / 1000:8.3f} ms CPU per call-second" + (f"  ({ratio}x the copy port)" if ratio else ""))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
