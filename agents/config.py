"""The config schema of each agent type (validated by telephony.config as part of the one YAML file)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EchoAgentConfig(_Strict):
    type: Literal["echo"]


class SayStep(_Strict):
    say: str
    interruptible: bool = True
    lang: str | None = None
    """espeak-ng voice for this prompt (for example `hi`); default is the agent's piper voice."""


class PlayStep(_Strict):
    play: str
    interruptible: bool = True


class CollectStep(_Strict):
    collect: str
    """Variable to store the digits in."""
    max_digits: int = Field(1, ge=1, le=32)
    timeout_s: float = Field(5.0, gt=0)
    terminator: str = "#"


class BranchStep(_Strict):
    branch: str
    """Variable to branch on."""
    cases: dict[str, str]
    default: str


class GotoStep(_Strict):
    goto: str


class HangupStep(_Strict):
    hangup: str = "normal"


class TransferStep(_Strict):
    transfer: str
    """SIP URI to transfer the caller to (blind transfer with REFER)."""
    timeout_s: float = Field(30.0, gt=0)
    """How long to wait for the transfer's outcome."""


class EchoStep(_Strict):
    echo_s: float = Field(gt=0, le=600)


class PauseStep(_Strict):
    pause_s: float = Field(gt=0, le=60)


Step = SayStep | PlayStep | CollectStep | BranchStep | GotoStep | HangupStep | TransferStep | EchoStep | PauseStep


class ScriptedAgentConfig(_Strict):
    type: Literal["scripted"]
    start: str
    nodes: dict[str, list[Step]]
    voice: str = "joe"
    """TTS voice: `joe` (piper, bundled) or an espeak-ng voice name."""

    @model_validator(mode="after")
    def _targets(self) -> ScriptedAgentConfig:
        names = set(self.nodes)
        if self.start not in names:
            raise ValueError(f"start node {self.start!r} is not among nodes")
        for node, steps in self.nodes.items():
            for step in steps:
                targets: list[str] = []
                if isinstance(step, GotoStep):
                    targets = [step.goto]
                elif isinstance(step, BranchStep):
                    targets = [*step.cases.values(), step.default]
                for t in targets:
                    if t not in names:
                        raise ValueError(f"node {node!r} jumps to unknown node {t!r}")
        return self


AgentConfig = Annotated[EchoAgentConfig | ScriptedAgentConfig, Field(discriminator="type")]
