"""The labelled barge-in clip set, built from packaged speech, and its evaluation through the real detector.

- agent turns: Asterisk's recorded prompts (Debian `asterisk-core-sounds-en-wav`, 8 kHz human speech);
- caller utterances and backchannels: espeak-ng (two voices) and piper's joe voice, through the telephone band;
- conditions: the agent's own audio returned as echo (20-500 ms, 6-20 dB down), line noise (30 dB SNR).
`evaluate()` drives CallMedia frame by frame (tests/unit/sim.py) and counts what a caller would notice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from media.barge_in import DetectorSettings
from media.events import BargeInConfirmed, BargeInPaused, BargeInResumed
from tests import audio
from tests.unit.sim import WireLine, simulate

PROMPTS = Path("/usr/share/asterisk/sounds/en")
AGENT_PROMPTS = (
    "demo-nogo", "confbridge-mute-extended", "tt-allbusy", "queue-periodic-announce", "vm-review", "vm-opts",
)
CALLER_TEXTS = (
    "Sorry to interrupt, but I need help with my bill.",
    "Wait, that is not what I asked for.",
    "Can I speak to a real person please?",
    "Stop, I already paid that invoice last week.",
    "Hold on, my account number is seven two nine.",
    "No no, I want to cancel my order.",
)
BACKCHANNEL_TEXTS = ("uh-huh", "yeah", "okay", "mm-hmm", "right")
LONG_BACKCHANNEL_TEXTS = ("yeah okay sure", "okay sure yeah", "mm-hmm okay", "uh-huh right", "right right okay")
"""Strings of backchannels said in one breath: many outlast `confirm_ms`, which alone cancels the reply."""
ECHO_DELAYS_MS = (20, 110, 250, 490)
ECHO_LOSS_DB = (6, 12, 20)
AGENT_DB = -20.0
CALLER_DB = -23.0


@functools.cache
def agent_turns() -> tuple[np.ndarray, ...]:
    return tuple(audio.scale_to_db(audio.trim(audio.read_wav(PROMPTS / f"{n}.wav")), AGENT_DB) for n in AGENT_PROMPTS)


def _voices(text: str) -> list[np.ndarray]:
    return [audio.espeak(text, "en-us", 165), audio.espeak(text, "en-gb", 190), audio.piper(text)]


@functools.cache
def caller_utterances() -> tuple[np.ndarray, ...]:
    out = []
    for t in CALLER_TEXTS:
        for x in _voices(t):
            out.append(audio.scale_to_db(audio.telephone_band(audio.trim(x)), CALLER_DB))
    return tuple(out)


@functools.cache
def backchannels() -> tuple[np.ndarray, ...]:
    out = []
    for t in BACKCHANNEL_TEXTS:
        for x in _voices(t):
            y = audio.trim(x)
            if y.size / 16000 < 0.6:
                out.append(audio.scale_to_db(audio.telephone_band(y), CALLER_DB))
    return tuple(out)


@functools.cache
def long_backchannels() -> tuple[np.ndarray, ...]:
    """`LONG_BACKCHANNEL_TEXTS` in the three voices, through the telephone band (0.5-1.1 s)."""
    return tuple(audio.scale_to_db(audio.telephone_band(audio.trim(x)), CALLER_DB)
                 for t in LONG_BACKCHANNEL_TEXTS for x in _voices(t))


@dataclass
class Evaluation:
    reaction_frames: list[int]
    missed: int
    echo_calls: int
    echo_false_pauses: int
    echo_false_stops: int
    backchannel_calls: int
    backchannel_stops: int
    backchannel_paused_ms: list[float]

    def row(self) -> dict[str, float]:
        r = np.asarray(self.reaction_frames, dtype=np.float64) * 20.0
        return {
            "reaction_p50_ms": round(float(np.percentile(r, 50)), 1) if r.size else float("nan"),
            "reaction_p95_ms": round(float(np.percentile(r, 95)), 1) if r.size else float("nan"),
            "missed": self.missed,
            "interrupt_calls": len(self.reaction_frames) + self.missed,
            "echo_false_pauses": self.echo_false_pauses,
            "echo_false_stops": self.echo_false_stops,
            "echo_calls": self.echo_calls,
            "backchannel_stops": self.backchannel_stops,
            "backchannel_calls": self.backchannel_calls,
            "backchannel_pause_p50_ms": round(float(np.median(self.backchannel_paused_ms)), 1)
            if self.backchannel_paused_ms else 0.0,
        }


@dataclass(frozen=True)
class ClipSpec:
    """One clip of the set: which agent turn, which caller sound (an index into `caller_utterances()` for
    `interrupt`, into `backchannels()` for `backchannel`, none for `echo`) and the line around it."""

    kind: str
    agent: int
    caller: int | None
    caller_at_s: float
    seconds: float
    seed: int
    echo_db: float | None = None
    echo_delay_ms: int = 100
    noise_snr_db: float | None = None
    line: WireLine | None = None


WIRE_ECHO_DELAYS_MS = (20, 100, 250, 500, 650, 800)
"""The wire's echo-only callers return 20-500 ms late; our media path and both jitter buffers add up to ~300 ms."""
WIRE_CLEAN = WireLine(noise_dbfs=-56.0)
WIRE_IMPAIRED = WireLine(drift_ms=120.0, loss=0.01, noise_dbfs=-56.0)
"""The bench's impaired line (1% loss, 20 ms jitter): jitter buffers that grow by up to 120 ms in 20 ms steps."""


def wire_echo_specs() -> list[ClipSpec]:
    """Echo-only clips as the wire bench's callers make them: echo from the agent's first frame, line noise at
    -56 dBFS (30 dB under a nominal -26 dBov talker), every delay of WIRE_ECHO_DELAYS_MS with the losses taken in
    turn, on a clean and on an impaired line."""
    agents = agent_turns()
    return [ClipSpec("echo", k, None, 0.0, agents[k].size / 16000, k * 10 + i,
                     -float(ECHO_LOSS_DB[(k + i) % len(ECHO_LOSS_DB)]), d, None, line)
            for line in (WIRE_CLEAN, WIRE_IMPAIRED) for k in range(len(agents))
            for i, d in enumerate(WIRE_ECHO_DELAYS_MS)]


def clip_specs(echo_loss_db: tuple[int, ...] = ECHO_LOSS_DB) -> list[ClipSpec]:
    """Every clip `evaluate` runs, in its order (bench/export_clipset.py writes the same list for other runners)."""
    agents = agent_turns()
    out: list[ClipSpec] = []
    for i in range(len(caller_utterances())):
        at = 1.2 + (i % 5) * 0.45
        out.append(ClipSpec("interrupt", i % len(agents), i, at, at + 2.5, i, -12.0 if i % 2 else None,
                            200 if i % 2 else 100, 30 if i % 3 == 0 else None))
    for k, agent in enumerate(agents):
        for d in ECHO_DELAYS_MS:
            for loss in echo_loss_db:
                out.append(ClipSpec("echo", k, None, 2.0, agent.size / 16000, k, -float(loss), d, 30))
    for j in range(len(backchannels())):
        out.append(ClipSpec("backchannel", j % len(agents), j, 1.5 + (j % 3) * 0.4, 4.0, j, noise_snr_db=30))
    return out


@dataclass(frozen=True)
class MidCallEcho:
    """One agent turn whose line starts returning it `echo_from_s` in (a caller turning on a speakerphone)."""

    agent: int
    echo_delay_ms: int
    echo_db: float
    pauses: int
    stops: int
    echo_state: str
    """What the detector's echo path believes at the end of the turn."""


def mid_call_echo(echo_from_s: float = 3.0) -> list[MidCallEcho]:
    """Every agent turn with an echo (the echo clips' delays and losses, 30 dB SNR noise) that starts mid-turn."""
    out = []
    for k, agent in enumerate(agent_turns()):
        for d in ECHO_DELAYS_MS:
            for loss in ECHO_LOSS_DB:
                r = simulate(agent, echo_db=-float(loss), echo_delay_ms=d, noise_snr_db=30, seconds=agent.size / 16000,
                             seed=k, echo_from_s=echo_from_s)
                out.append(MidCallEcho(k, d, -float(loss), r.count(BargeInPaused), r.count(BargeInConfirmed),
                                       r.media.detector.echo.state))
    return out


def evaluate(
    settings: DetectorSettings | None = None,
    echo_loss_db: tuple[int, ...] = ECHO_LOSS_DB,
    specs: list[ClipSpec] | None = None,
    inbound_filter: Callable[[ClipSpec], Callable[[np.ndarray, np.ndarray], np.ndarray]] | None = None,
) -> Evaluation:
    """Every clip of `clip_specs(echo_loss_db)`, or `specs`; `inbound_filter(spec)` makes a filter for each clip's
    inbound frames (bench/aec_eval.py: an echo canceller or noise suppressor before the detector)."""
    agents, callers, bcs = agent_turns(), caller_utterances(), backchannels()
    ev = Evaluation([], 0, 0, 0, 0, 0, 0, [])
    for c in clip_specs(echo_loss_db) if specs is None else specs:
        sound = None if c.caller is None else (bcs if c.kind == "backchannel" else callers)[c.caller]
        r = simulate(agents[c.agent], sound, caller_at_s=c.caller_at_s, echo_db=c.echo_db,
                     echo_delay_ms=c.echo_delay_ms, noise_snr_db=c.noise_snr_db, seconds=c.seconds,
                     settings=settings, seed=c.seed, inbound_filter=inbound_filter(c) if inbound_filter else None,
                     line=c.line)
        if c.kind == "interrupt":
            assert r.caller_frame is not None
            if r.first(BargeInConfirmed) is None:
                ev.missed += 1
            else:
                ev.reaction_frames.append(r.last_agent_frame_after(r.caller_frame) - r.caller_frame + 1)
        elif c.kind == "echo":
            ev.echo_calls += 1
            ev.echo_false_pauses += r.count(BargeInPaused) > 0
            ev.echo_false_stops += r.count(BargeInConfirmed) > 0
        else:
            ev.backchannel_calls += 1
            ev.backchannel_stops += r.count(BargeInConfirmed) > 0
            ev.backchannel_paused_ms += [e.paused_ms for e in r.events if isinstance(e, BargeInResumed)]
    return ev
