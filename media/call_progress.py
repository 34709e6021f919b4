"""Outbound call progress after the answer: special information tones (SIT), and answering-machine detection
(a person's short greeting, or a machine's long one and its beep).

Pure: fed each 16 kHz inbound frame with its time and the VAD's verdict, it returns what it decided. SIT is the
three rising tones of an intercept (913.8, 1370.6, 1776.7 Hz, 276-380 ms each). The machine/person decision is
Asterisk's AMD rule: speech that runs past `greeting_ms` is a machine, speech that stops for `after_greeting_ms`
before that is a person, and no speech for `initial_silence_ms` is a machine. A machine's message cue is the end
of its beep (one steady tone of 80 ms or more), or `no_beep_ms` of silence after its greeting. Tones never count
as speech. Hand-written: no Python library classifies call progress on a live stream (see media/tones.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

SIT_HZ = (913.8, 1370.6, 1776.7)
_TONE_SHARE = 0.85
"""A frame is one tone when its strongest peak (with its neighbour bins) holds this share of the energy."""
_HZ_TOLERANCE = 25.0
_MIN_TONE_DB = -45.0
_TONE_BAND = (300.0, 3400.0)


@dataclass(frozen=True)
class AmdSettings:
    initial_silence_ms: int = 2500
    greeting_ms: int = 1500
    after_greeting_ms: int = 800
    sit_tone_ms: int = 160
    """Each SIT tone must last this long (the shortest standard segment is 276 ms)."""
    beep_ms: int = 80
    no_beep_ms: int = 3000
    beep_wait_ms: int = 20000
    """After a machine's greeting, how long a beep (or the silence that stands for one) is waited for."""


@dataclass(frozen=True)
class Sit:
    at: float


@dataclass(frozen=True)
class Human:
    at: float
    greeting_ms: int


@dataclass(frozen=True)
class Machine:
    at: float
    greeting_ms: int
    reason: str
    """`long_greeting` or `initial_silence`."""


@dataclass(frozen=True)
class MessageCue:
    """The machine records from now: after its beep (`beep_hz`), or after its greeting and a silence (None)."""

    at: float
    beep_hz: float | None


Progress = Sit | Human | Machine | MessageCue


def tone_hz(samples: npt.NDArray[np.int16], rate: int = 16000) -> float | None:
    """The frequency of the one tone a frame holds, or None (speech, noise, silence or two tones)."""
    x = samples.astype(np.float64)
    if x.size < 64 or 10 * np.log10(float(np.mean(x**2)) / 32768**2 + 1e-12) < _MIN_TONE_DB:
        return None
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    k = int(np.argmax(spec[1:-1])) + 1
    if float(spec[k - 1 : k + 2].sum()) / float(spec.sum()) < _TONE_SHARE:
        return None
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)  # parabolic interpolation of the log spectrum (Hann: accurate)
    offset = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c != 0 else 0.0
    hz = float((k + offset) * rate / x.size)
    return hz if _TONE_BAND[0] <= hz <= _TONE_BAND[1] else None  # below: a voice's fundamental can look like one


@dataclass
class _Run:
    hz: float = 0.0
    start: float = 0.0
    end: float = 0.0


@dataclass
class CallProgress:
    """Feed every inbound frame from the answer on; `process` returns the decisions it reaches (each once)."""

    settings: AmdSettings = field(default_factory=AmdSettings)
    rate: int = 16000
    started: float | None = None
    decided: Human | Machine | Sit | None = None
    cue: MessageCue | None = None
    _speech_start: float | None = None
    _last_speech: float | None = None
    _sit: list[_Run] = field(default_factory=list)
    _tone: _Run | None = None
    _greeting_end: float | None = None

    def process(self, now: float, samples: npt.NDArray[np.int16], speech: bool) -> list[Progress]:
        if self.started is None:
            self.started = now
        hz = tone_hz(samples, self.rate)
        out: list[Progress] = []
        tone_ended = self._follow_tone(now, hz)
        if isinstance(self.decided, Sit) or self.cue is not None:
            return out
        if self.decided is None and self._sit_complete(now):
            self.decided = Sit(now)
            return [self.decided]
        if self.decided is None:
            out += self._amd(now, speech and hz is None)
        if isinstance(self.decided, Machine) and self.cue is None:
            out += self._message_cue(now, speech and hz is None, tone_ended)
        return out

    # -- tones ---------------------------------------------------------------------------------------------
    def _follow_tone(self, now: float, hz: float | None) -> _Run | None:
        """Track the current steady tone; return the run that just ended, if one did."""
        run = self._tone
        if hz is not None and run is not None and abs(hz - run.hz) <= _HZ_TOLERANCE:
            run.end = now
            return None
        self._tone = _Run(hz, now, now) if hz is not None else None
        if run is not None and (run.end - run.start) * 1000 + 20 >= self.settings.sit_tone_ms:
            self._sit_step(run)
        return run

    def _sit_step(self, run: _Run) -> None:
        i = len(self._sit)
        if i < 3 and abs(run.hz - SIT_HZ[i]) <= _HZ_TOLERANCE and (not i or run.start - self._sit[-1].end < 0.15):
            self._sit.append(run)
        elif abs(run.hz - SIT_HZ[0]) <= _HZ_TOLERANCE:
            self._sit = [run]
        else:
            self._sit = []

    def _sit_complete(self, now: float) -> bool:
        run = self._tone
        if len(self._sit) == 2 and run is not None and abs(run.hz - SIT_HZ[2]) <= _HZ_TOLERANCE:
            return (run.end - run.start) * 1000 + 20 >= self.settings.sit_tone_ms
        return len(self._sit) == 3

    # -- answering machine ---------------------------------------------------------------------------------
    def _amd(self, now: float, speech: bool) -> list[Progress]:
        s = self.settings
        assert self.started is not None
        if speech:
            if self._speech_start is None:
                self._speech_start = now
            self._last_speech = now
        if self._speech_start is None:
            if (now - self.started) * 1000 >= s.initial_silence_ms:
                self.decided = Machine(now, 0, "initial_silence")
                self._greeting_end = now
                return [self.decided]
            return []
        assert self._last_speech is not None
        greeting = round((self._last_speech - self._speech_start) * 1000) + 20
        if (now - self._last_speech) * 1000 >= s.after_greeting_ms:
            self.decided = Human(now, greeting)
            return [self.decided]
        if greeting >= s.greeting_ms:
            self.decided = Machine(now, greeting, "long_greeting")
            return [self.decided]
        return []

    def _message_cue(self, now: float, speech: bool, tone_ended: _Run | None) -> list[Progress]:
        s = self.settings
        assert isinstance(self.decided, Machine)
        if tone_ended is not None and (tone_ended.end - tone_ended.start) * 1000 + 20 >= s.beep_ms:
            self.cue = MessageCue(now, round(tone_ended.hz, 1))
            return [self.cue]
        if speech or self._tone is not None:
            self._greeting_end = None
        elif self._greeting_end is None:
            self._greeting_end = now
        elif (now - self._greeting_end) * 1000 >= s.no_beep_ms or (now - self.decided.at) * 1000 >= s.beep_wait_ms:
            self.cue = MessageCue(now, None)
            return [self.cue]
        return []
