"""QA call scripts: one YAML file per call scenario, validated with file:line errors like the gateway config.

```yaml
name: demo menu
target: sip:100@127.0.0.1:5060      # --target overrides it
codecs: [PCMU]
expect_status: 200
steps:
  - wait_speech: {timeout_s: 5}           # the agent starts talking (measures its latency)
  - wait_silence: {min_s: 0.8, timeout_s: 20}
  - dtmf: "3"
  - interrupt: {say: "Sorry, can I stop you?", after_ms: 1500, expect_stop_ms: 300}
  - backchannel: {say: "uh-huh", after_ms: 1000}
  - echo: {db: -12, delay_ms: 200}        # from now on the agent hears itself
  - say: "I would like to check my order"
  - wait: 1.5
  - hangup: {}
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from telephony.config import KNOWN_CODECS, read_text, validate_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Speech(_Strict):
    """What the caller says: text (rendered by TTS) or a WAV file."""

    say: str | None = None
    play: str | None = None
    voice: str = "en-us"
    """espeak-ng voice, or `joe` for piper."""

    @model_validator(mode="after")
    def _one(self) -> Speech:
        if (self.say is None) == (self.play is None):
            raise ValueError("give exactly one of say or play")
        return self


class WaitSpeechArgs(_Strict):
    timeout_s: float = Field(10.0, gt=0)


class WaitSpeech(_Strict):
    wait_speech: WaitSpeechArgs = WaitSpeechArgs()


class WaitSilenceArgs(_Strict):
    min_s: float = Field(0.8, gt=0)
    timeout_s: float = Field(30.0, gt=0)


class WaitSilence(_Strict):
    wait_silence: WaitSilenceArgs = WaitSilenceArgs()


class Say(_Strict):
    say: str
    voice: str = "en-us"
    wait: bool = True
    """False: the next step starts while the caller is still speaking."""


class Play(_Strict):
    play: str
    wait: bool = True


class Dtmf(_Strict):
    dtmf: str = Field(pattern=r"^[0-9*#A-Da-d]+$")
    method: Literal["rfc4733", "info"] = "rfc4733"


class InterruptArgs(Speech):
    after_ms: float = Field(1000.0, ge=0)
    """Start speaking this long after the step starts (the agent should be talking by then)."""
    expect_stop_ms: float = Field(300.0, gt=0)
    """Pass when the agent's audio stops within this long of the caller's speech onset."""


class Interrupt(_Strict):
    interrupt: InterruptArgs


class BackchannelArgs(Speech):
    after_ms: float = Field(1000.0, ge=0)
    expect_continue_s: float = Field(1.0, gt=0)
    """Pass when the agent is heard again within this long after the backchannel ends."""


class Backchannel(_Strict):
    backchannel: BackchannelArgs


class EchoArgs(_Strict):
    db: float = Field(-12.0, le=0)
    delay_ms: int = Field(200, ge=0, le=2000)


class Echo(_Strict):
    echo: EchoArgs | Literal["off"]


class Wait(_Strict):
    wait: float = Field(gt=0, le=600)


class HangupArgs(_Strict):
    pass


class Hangup(_Strict):
    hangup: HangupArgs = HangupArgs()


class ExpectHangupArgs(_Strict):
    timeout_s: float = Field(10.0, gt=0)


class ExpectHangup(_Strict):
    expect_hangup: ExpectHangupArgs = ExpectHangupArgs()


Step = (
    WaitSpeech | WaitSilence | Say | Play | Dtmf | Interrupt | Backchannel | Echo | Wait | Hangup | ExpectHangup
)


class Script(_Strict):
    name: str
    target: str | None = None
    codecs: list[str] = ["PCMU"]
    expect_status: int = Field(200, ge=100, le=699)
    answer_timeout_s: float = Field(15.0, gt=0)
    max_duration_s: float = Field(300.0, gt=0)
    steps: list[Step] = []

    @model_validator(mode="after")
    def _check(self) -> Script:
        bad = [c for c in self.codecs if c.upper() not in KNOWN_CODECS]
        if bad:
            raise ValueError(f"unknown codec {bad[0]!r}; known: {', '.join(KNOWN_CODECS)}")
        if self.expect_status != 200 and self.steps:
            raise ValueError("a call expected to fail has no steps")
        return self


def step_name(step: Step) -> str:
    """The step's keyword (`wait_speech`, `interrupt`, ...)."""
    return next(iter(type(step).model_fields))


def load_script(path: str | Path) -> Script:
    return validate_yaml(read_text(path), str(path), Script)
