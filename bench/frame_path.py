"""CPU of the Python frame path per call-second, replayed without a clock (a sans-IO micro-benchmark).

Each scenario feeds one call's 20 ms frames through the real `CallMediaPort`, in the bridge's order (a frame
requested, then one received, every tick), through pjmedia's own `pjmedia_port_get_frame`/`put_frame`, so the C ->
Python upcall of each callback is in the figures:
- `echo`: the echo agent (loopback), the caller's speech coming in;
- `agent`: an agent prompt playing, its echo coming back 200 ms later 12 dB down with line noise (VAD, barge-in
  detector, echo path estimator and tone rejector all at work);
- `copy port`: the baseline, in the same run: a port that only copies each received frame back through the same
  buffers, the floor of any Python port.
CPU is `time.process_time` (this process's CPU time, not wall time, so other work on the machine barely moves it),
the least of `repeats` runs. Not in these figures: the GIL hand-over between the clock thread and the others.

Usage: python -m bench.frame_path [--seconds S] [--profile agent|echo] [--json PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
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
from telephony.media_port import CallMediaPort, PjFrame, get_frame, put_frame
from tests import audio, clipset

_AUDIO = int(pj.PJMEDIA_FRAME_TYPE_AUDIO)


class _CopyPort(CallMediaPort):
    """The baseline: each received frame goes back out on the next request, through the same frame access."""

    def __init__(self) -> None:
        super().__init__("copy")
        self._last = SILENCE
        self.attach(CallMedia(lambda e: None), "copy")

    def _on_put(self, _port: int | None, frame: int | None) -> int:
        if not frame:
            return 0
        f = PjFrame.from_address(frame)
        self._last = ctypes.string_at(f.buf, FRAME_BYTES) if f.type == _AUDIO else SILENCE
        return 0

    def _on_get(self, _port: int | None, frame: int | None) -> int:
        if not frame:
            return 0
        f = PjFrame.from_address(frame)
        ctypes.memmove(f.buf, self._last, FRAME_BYTES)
        f.type, f.size = _AUDIO, FRAME_BYTES
        return 0


def _frames(x: np.ndarray, n: int) -> list[bytes]:
    x = np.concatenate([x, np.zeros(max(0, n * FRAME_SAMPLES - x.size))])[: n * FRAME_SAMPLES]
    pcm = audio.to_pcm(x)
    return [pcm[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] for i in range(n)]


def _run(port: CallMediaPort, inbound: list[bytes]) -> float:
    """CPU seconds of one replay of `inbound` through `port`, a frame requested before each one received, in
    buffers of the bridge's own."""
    rx_buf, tx_buf = ctypes.create_string_buffer(FRAME_BYTES), ctypes.create_string_buffer(FRAME_BYTES)
    rx = PjFrame(type=_AUDIO, buf=ctypes.addressof(rx_buf), size=FRAME_BYTES)
    tx = PjFrame(buf=ctypes.addressof(tx_buf))
    c0 = time.process_time()
    for pcm in inbound:
        tx.size = FRAME_BYTES  # the bridge asks for one frame
        get_frame(port, tx)
        ctypes.memmove(rx_buf, pcm, FRAME_BYTES)
        put_frame(port, rx)
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
        media = CallMedia(lambda e: None)
        media.set_loopback(True)
        port = CallMediaPort("echo")
        port.attach(media, "echo")
        return _run(port, caller_in)

    def agent_call() -> float:
        media = CallMedia(lambda e: None)
        media.push(agent_pcm, item=1)
        port = CallMediaPort("agent")
        port.attach(media, "agent")
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
    return _main(ap.parse_args())


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
