"""Drive one CallMedia frame by frame with exact timestamps: agent playout, caller speech, echo, noise, tones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from media.barge_in import DetectorSettings
from media.events import MediaEvent
from media.frames import FRAME_SAMPLES, SILENCE
from media.pipeline import CallMedia
from tests import audio


@dataclass
class SimResult:
    events: list[MediaEvent]
    sent: list[bytes]
    media: CallMedia
    caller_frame: int | None = None
    types: list[str] = field(default_factory=list)

    def first(self, kind: type) -> MediaEvent | None:
        return next((e for e in self.events if isinstance(e, kind)), None)

    def count(self, kind: type) -> int:
        return sum(isinstance(e, kind) for e in self.events)

    def last_agent_frame_after(self, k: int) -> int:
        """Index of the last frame at or after k (until the first silent frame) that carried agent audio."""
        last = k - 1
        for i in range(k, len(self.sent)):
            if self.sent[i] == SILENCE:
                break
            last = i
        return last


@dataclass(frozen=True)
class WireLine:
    """How a real leg bends the echo: a delay that wanders as both jitter buffers grow and shrink, lost packets
    concealed by a repeated frame, and line noise at an absolute level (the wire bench's echo-only caller)."""

    drift_ms: float = 0.0
    """The echo's delay wanders between its nominal value and this much more, in steps of `step_ms`."""
    step_ms: float = 20.0
    every_s: float = 0.5
    """How often the delay may step (a jitter buffer adapts every few hundred ms)."""
    loss: float = 0.0
    """Share of inbound frames lost."""
    noise_dbfs: float | None = None
    """White line noise at this level (dBFS), instead of `noise_snr_db` under the agent."""

    def delays_ms(self, base_ms: float, frames: int, rng: np.random.Generator) -> np.ndarray:
        """The echo's delay in each frame: a bounded random walk from `base_ms`."""
        out, d, every = np.empty(frames), 0.0, max(1, round(self.every_s * 50))
        for k in range(frames):
            if k % every == 0 and self.drift_ms > 0:
                d = float(np.clip(d + rng.choice((-1.0, 0.0, 1.0)) * self.step_ms, 0.0, self.drift_ms))
            out[k] = base_ms + d
        return out


def tone(freqs: tuple[float, float], seconds: float, level_db: float = -20.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    x = sum(np.sin(2 * np.pi * f * t) for f in freqs)
    return audio.scale_to_db(np.asarray(x, dtype=np.float64), level_db)


def simulate(
    agent: np.ndarray,
    caller: np.ndarray | None = None,
    caller_at_s: float = 2.0,
    echo_db: float | None = None,
    echo_delay_ms: int = 100,
    noise_snr_db: float | None = None,
    seconds: float = 6.0,
    settings: DetectorSettings | None = None,
    seed: int = 0,
    echo_from_s: float = 0.0,
    inbound_filter: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    after_frame: Callable[[float, CallMedia, bytes], None] | None = None,
    words_wait_ms: int | None = None,
    words_confirm_early: bool = True,
    line: WireLine | None = None,
) -> SimResult:
    """`echo_from_s`: the line returns the agent's audio only from then on (a caller who turns on a speakerphone).
    `inbound_filter(played, inbound)`, when given, cleans each inbound frame before the detector sees it;
    `after_frame(t, media, frame)` is called after each inbound frame (an agent's verdicts: `media.decide`);
    `words_wait_ms`, `words_confirm_early`: the agent hears words (`CallMedia.hold_for_words`);
    `line`: the echo comes back as over a real leg (`WireLine`: drift, lost frames, absolute noise level)."""
    events: list[MediaEvent] = []
    media = CallMedia(events.append, settings)
    media.hold_for_words(words_wait_ms, words_confirm_early)
    media.push(audio.to_pcm(agent), item=1)
    rng = np.random.default_rng(seed)
    noise_db = audio.rms_db(agent) - noise_snr_db if noise_snr_db is not None else None
    start = int(caller_at_s * 50)
    sent: list[bytes] = []
    if line is not None and line.noise_dbfs is not None:
        noise_db = line.noise_dbfs
    frames = int(seconds * 50)
    delays = line.delays_ms(echo_delay_ms, frames, rng) if line is not None else np.full(frames, echo_delay_ms)
    lost = rng.random(frames) < line.loss if line is not None else np.zeros(frames, dtype=bool)
    delay_max = int(delays.max() * 16)  # in samples: phone legs' delays are no multiple of our 20 ms frames
    hist = np.zeros(delay_max + frames * FRAME_SAMPLES)
    """Everything we sent, after `delay_max` samples of silence before the call."""
    prev = np.zeros(FRAME_SAMPLES)
    for k in range(frames):
        t = k * 0.02
        sent.append(media.next_outbound(t))
        hist[delay_max + k * FRAME_SAMPLES : delay_max + (k + 1) * FRAME_SAMPLES] = audio.to_array(sent[-1])
        x = np.zeros(FRAME_SAMPLES)
        if caller is not None and k >= start:
            seg = caller[(k - start) * FRAME_SAMPLES : (k - start + 1) * FRAME_SAMPLES]
            x[: seg.size] += seg
        if echo_db is not None and t >= echo_from_s:
            i = delay_max + (k + 1) * FRAME_SAMPLES - int(delays[k] * 16) - FRAME_SAMPLES
            x += hist[i : i + FRAME_SAMPLES] * 10 ** (echo_db / 20)
        if noise_db is not None:
            x += rng.standard_normal(FRAME_SAMPLES) * 32768 * 10 ** (noise_db / 20)
        if lost[k]:
            x = prev * 0.5  # a lost packet, concealed by repeating the last frame half as loud
        prev = x
        if inbound_filter is not None:
            x = inbound_filter(audio.to_array(sent[-1]), x)
        pcm = audio.to_pcm(x)
        media.on_inbound(t, pcm)
        if after_frame is not None:
            after_frame(t, media, pcm)
    res = SimResult(events, sent, media)
    if caller is not None:
        res.caller_frame = start + audio.onset_index(caller)
    return res
