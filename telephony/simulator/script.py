"""QA call scripts: one YAML file per call scenario, validated with file:line errors like the gateway config.

```yaml
name: demo menu
target: sip:demo@127.0.0.1:5060     # --target overrides it
codecs: [PCMU]
expect_status: 200
dial:                                   # optional: how the INVITE looks
  headers: {X-Customer-Id: "42"}
  from: {user: qa-bot, display: QA Bot}
  to: {user: "100", display: Reception}  # the To header; the request goes to the target
  auth: {username: alice, password_env: SIM_PASSWORD}  # answers a 401/407 challenge
network: {loss_pct: 2, jitter_ms: 20, reorder_pct: 5, skew_ppm: 300}  # optional: a bad line, each way
steps:
  - wait_speech: {timeout_s: 5}           # the agent starts talking (measures its latency)
  - wait_silence: {min_s: 0.8, timeout_s: 20}
  - dtmf: "3"
    expect_reply_ms: 1500                 # optional: the agent answers the key this fast (reply_ms)
  - interrupt: {say: "Sorry, can I stop you?", after_ms: 1500, expect_stop_ms: 300}  # 1.5 s into the agent's talk
  - backchannel: {say: "uh-huh", after_ms: 1000}
  - echo: {db: -12, delay_ms: 200}        # from now on the agent hears itself
  - expect_no_barge_in: {for_s: 3, max_pause_ms: 450}  # ... and must not stop for its echo (false_barge_ins)
  - noise: {snr_db: 30, color: pink}     # from now on noise 30 dB under the caller's speech, under all it sends
  - say: "I would like to check my order"
    voice: joe                            # piper; any other name is an espeak-ng voice (default en-us)
  - expect_speech:                        # the agent's next utterance, transcribed by the embedded ASR
      any_of: [order, booking]            # also contains, not_contains, matches (regex), min_confidence
      timeout_s: 10
  - expect_transfer: {to: "sip:operator@*", timeout_s: 5}  # a REFER (declined); or to: /regex/
  - persona:                              # an LLM plays the caller: listen, transcribe, ask it, speak its line
      url: http://127.0.0.1:8080/v1       # any OpenAI-compatible chat completions endpoint
      model: gpt-4o-mini
      api_key_env: OPENAI_API_KEY         # optional
      role: a hotel guest called Sam
      goal: find out when reception is open
      max_turns: 3                        # lines spoken at most; passes when the LLM says the goal is reached
      judge: true                         # ... and a separate yes/no request finds it met in the transcript
      until: [goodbye]                    # optional: the agent saying one of these also ends it (passed)
  - wait: 1.5
  - hangup: {}
```
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from agents.patterns import Regex, TextOrRegex
from telephony.config import KNOWN_CODECS, env_var, read_text, validate_yaml
from telephony.simulator.shaper import LineImpairment


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
    expect_reply_ms: float | None = Field(None, gt=0)
    """Pass when the agent's next audio starts within this long of sending the keys (measured as `reply_ms`)."""


class InterruptArgs(Speech):
    after_ms: float = Field(1000.0, ge=0)
    """Start speaking this long after the agent's talk began (the talk under way when the step starts, else its
    next; pauses under a second belong to it), at a moment its audio runs."""
    timeout_s: float = Field(10.0, gt=0)
    """Fail when the caller has not started within `after_ms` plus this long of the step's start."""
    expect_stop_ms: float = Field(300.0, gt=0)
    """Pass when the agent's audio stops within this long of the caller's speech onset."""


class Interrupt(_Strict):
    interrupt: InterruptArgs


class ExpectNoBargeInArgs(_Strict):
    for_s: float = Field(3.0, gt=0, le=600)
    """Watch the agent's audio this long; the step says nothing (an `echo:` step before it makes the caller
    return the agent's own audio)."""
    max_pause_ms: float = Field(450.0, gt=0)
    """A silence of the agent's longer than this, begun while the caller was silent, is a false barge-in (piper's
    pauses between sentences of the demo's long message measured up to 360 ms)."""


class ExpectNoBargeIn(_Strict):
    expect_no_barge_in: ExpectNoBargeInArgs = ExpectNoBargeInArgs()


class EchoArgs(_Strict):
    db: float = Field(-12.0, le=0)
    delay_ms: int = Field(200, ge=0, le=2000)


class Echo(_Strict):
    echo: EchoArgs | Literal["off"]


class NoiseArgs(_Strict):
    snr_db: float = Field(ge=-10, le=80)
    """Noise this many dB under the caller's speech level (its utterances in this script, see simulator/noise.py)."""
    color: Literal["white", "pink"] = "white"
    seed: int = 0


class Noise(_Strict):
    noise: NoiseArgs | Literal["off"]
    """From now on the caller sends this noise under everything (`off`: no more noise)."""


class Wait(_Strict):
    wait: float = Field(gt=0, le=600)


class HangupArgs(_Strict):
    pass


class Hangup(_Strict):
    hangup: HangupArgs = HangupArgs()


class ExpectTransferArgs(_Strict):
    to: TextOrRegex = "*"
    """The Refer-To URI: a glob (`sip:operator@*`) or a `/regex/` searched in it."""
    timeout_s: float = Field(10.0, gt=0)

    def matches(self, refer_to: str) -> bool:
        uri = refer_to.strip().removeprefix("<").removesuffix(">")
        if len(self.to) > 1 and self.to.startswith("/") and self.to.endswith("/"):
            return re.search(self.to[1:-1], uri) is not None
        return fnmatch.fnmatchcase(uri, self.to)


class ExpectTransfer(_Strict):
    expect_transfer: ExpectTransferArgs = ExpectTransferArgs()


class ExpectHangupArgs(_Strict):
    timeout_s: float = Field(10.0, gt=0)


class ExpectHangup(_Strict):
    expect_hangup: ExpectHangupArgs = ExpectHangupArgs()


ASR_ENGINES = ("moonshine",)
RESERVED_HEADERS = frozenset({"via", "from", "to", "call-id", "cseq", "contact", "max-forwards", "content-type",
                              "content-length", "authorization", "proxy-authorization", "route", "record-route"})
"""Headers pjsua writes itself; a script sets From and To through `from`/`to` and credentials through `auth`."""
_TOKEN = re.compile(r"^[A-Za-z0-9!%*_+`'~.-]+$")
_USER = re.compile(r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+$")


class Party(_Strict):
    """A From or To header: `"display" <sip:user@host>`."""

    user: str = Field(pattern=_USER.pattern)
    display: str = Field("", pattern=r'^[^"\\\r\n]*$')
    host: str = Field("", pattern=r"^[A-Za-z0-9.:\[\]-]*$")
    """Empty: the phone's own address (From) or the target's host (To)."""

    def uri(self, default_host: str) -> str:
        addr = f"<sip:{self.user}@{self.host or default_host}>"
        return f'"{self.display}" {addr}' if self.display else addr


class DigestAuth(_Strict):
    username: str = Field(min_length=1)
    password_env: Annotated[str, env_var("the dial password")]
    """Name of the environment variable holding the password (never the password itself)."""
    realm: str = "*"
    """Digest realm the credentials are for; `*` answers any realm."""

    @property
    def password(self) -> str:
        return os.environ.get(self.password_env, "")


class Dial(_Strict):
    headers: dict[str, str] = {}
    """Extra INVITE headers, e.g. `X-Customer-Id`, `User-to-User`, `P-Asserted-Identity`."""
    from_: Party | None = Field(None, alias="from")
    to: Party | None = None
    auth: DigestAuth | None = None

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a SIP header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{name} is written by the phone itself (use from, to or auth)")
            if "\r" in value or "\n" in value:
                raise ValueError(f"the value of {name} spans lines")
        return v


def normalize(text: str) -> str:
    """Lower case, apostrophes dropped, other punctuation as spaces: `Harbour Hotel's.` -> `harbour hotels`."""
    return " ".join(re.sub(r"[\W_]+", " ", re.sub(r"['\u2019]", "", text.lower())).split())


def _phrase(v: str) -> str:
    if not normalize(v):
        raise ValueError(f"{v!r} has no words to look for")
    return v


def _engine(v: str) -> str:
    if v not in ASR_ENGINES:
        raise ValueError(f"unknown ASR engine {v!r}; the simulator has: {', '.join(ASR_ENGINES)}")
    return v


Phrase = Annotated[str, AfterValidator(_phrase)]
"""Words to look for in a transcript (case and punctuation ignored)."""
AsrEngine = Annotated[str, AfterValidator(_engine)]


class BackchannelArgs(Speech):
    after_ms: float = Field(1000.0, ge=0)
    expect_continue_s: float = Field(1.0, gt=0)
    """Pass when the agent is heard again within this long after the backchannel ends ..."""
    max_pause_ms: float = Field(1500.0, gt=0)
    """... and its audio, from the caller's onset on, never stopped for longer than this (reported as `pause_ms`)."""
    then_says: list[Phrase] = []
    """Words of the reply the backchannel fell into: what the agent says once it resumed (until a second of quiet,
    at most 4 s), transcribed, must contain one of them; a new prompt instead of the paused reply
    fails."""
    engine: AsrEngine = "moonshine"


class Backchannel(_Strict):
    backchannel: BackchannelArgs


class ExpectSpeechArgs(_Strict):
    contains: list[Phrase] = []
    """Every phrase must appear (whole words, case and punctuation ignored)."""
    any_of: list[Phrase] = []
    not_contains: list[Phrase] = []
    matches: Regex | None = None
    """A regex searched (case-insensitive) in the transcript as the ASR wrote it."""
    min_confidence: float = Field(0.0, ge=0, le=1)
    timeout_s: float = Field(10.0, gt=0)
    """For the agent to start speaking."""
    silence_s: float = Field(1.0, gt=0)
    """Quiet this long ends the utterance."""
    max_s: float = Field(30.0, gt=0)
    """An utterance is cut (and checked) at this length."""
    engine: AsrEngine = "moonshine"

    def failure(self, text: str, confidence: float) -> str:
        """Why a transcript fails these expectations ('' when it passes)."""
        # An ASR may hyphenate a word ("to-day") or a compound ("well-known"): a phrase matches either reading.
        joined = re.sub(r"(?<=\w)-(?=\w)", "", text)
        readings = (f" {normalize(text)} ", f" {normalize(joined)} ")

        def has(phrase: str) -> bool:
            return any(f" {normalize(phrase)} " in words for words in readings)

        for p in self.contains:
            if not has(p):
                return f"expected {p!r} in {text!r}"
        if self.any_of and not any(has(p) for p in self.any_of):
            return f"expected one of {', '.join(map(repr, self.any_of))} in {text!r}"
        for p in self.not_contains:
            if has(p):
                return f"did not expect {p!r} in {text!r}"
        if self.matches is not None and not re.search(self.matches, text, re.IGNORECASE):
            return f"expected /{self.matches}/ to match {text!r}"
        if confidence < self.min_confidence:
            return f"ASR confidence {confidence:.2f} is below {self.min_confidence:g} for {text!r}"
        return ""


class ExpectSpeech(_Strict):
    expect_speech: ExpectSpeechArgs = ExpectSpeechArgs()


class PersonaArgs(_Strict):
    """A caller played by an LLM (any OpenAI-compatible chat completions endpoint) for up to `max_turns` lines."""

    url: str = Field(pattern=r"^https?://\S+$")
    """The endpoint's base URL, e.g. `http://127.0.0.1:8080/v1` (`/chat/completions` is added)."""
    model: str = Field(min_length=1)
    api_key_env: Annotated[str, env_var("the persona's API key")] | None = None
    """Name of the environment variable holding the API key (never the key itself); none: no key sent."""
    role: str = Field(min_length=1)
    """Who the caller is: `a hotel guest called Sam, in a hurry`."""
    goal: str = Field(min_length=1)
    """What the caller wants; the LLM says when it is reached."""
    max_turns: int = Field(4, ge=1, le=20)
    """Lines the caller speaks at most; the goal not reached by then fails the step."""
    until: list[Phrase] = []
    """Phrases that end the step (passed) when the agent says one, e.g. `goodbye`."""
    voice: str = "en-us"
    timeout_s: float = Field(10.0, gt=0)
    """For the agent to start speaking each turn; silence that long is a turn where it said nothing."""
    silence_s: float = Field(1.0, gt=0)
    """Quiet this long ends the agent's utterance."""
    engine: AsrEngine = "moonshine"
    judge: bool = True
    """When the LLM marks the goal reached, ask the same endpoint once more, at temperature 0, only whether the
    transcript shows the goal met (yes/no); the step passes only on yes. An `until` phrase passes without it."""

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def heard_until(self, text: str) -> str | None:
        """The first `until` phrase in what the agent said, if any."""
        words = f" {normalize(text)} "
        return next((p for p in self.until if f" {normalize(p)} " in words), None)


class Persona(_Strict):
    persona: PersonaArgs


_STEPS: dict[str, type[_Strict]] = {
    "wait_speech": WaitSpeech, "wait_silence": WaitSilence, "say": Say, "play": Play, "dtmf": Dtmf,
    "interrupt": Interrupt, "backchannel": Backchannel, "echo": Echo, "wait": Wait, "hangup": Hangup,
    "expect_hangup": ExpectHangup, "expect_speech": ExpectSpeech, "expect_transfer": ExpectTransfer,
    "persona": Persona, "expect_no_barge_in": ExpectNoBargeIn, "noise": Noise,
}


def _step_kind(v: Any) -> str | None:
    """The step class's name for a YAML mapping, by its step keyword (`wait` is also an option of say and play)."""
    if isinstance(v, BaseModel):
        return type(v).__name__
    if not isinstance(v, dict):
        return None
    kinds = [k for k in v if k in _STEPS]
    kind = next((k for k in kinds if k != "wait"), kinds[0] if kinds else None)
    return _STEPS[kind].__name__ if kind else None


Step = Annotated[
    Annotated[WaitSpeech, Tag("WaitSpeech")] | Annotated[WaitSilence, Tag("WaitSilence")]
    | Annotated[Say, Tag("Say")] | Annotated[Play, Tag("Play")] | Annotated[Dtmf, Tag("Dtmf")]
    | Annotated[Interrupt, Tag("Interrupt")] | Annotated[Backchannel, Tag("Backchannel")]
    | Annotated[Echo, Tag("Echo")] | Annotated[Wait, Tag("Wait")] | Annotated[Hangup, Tag("Hangup")]
    | Annotated[ExpectHangup, Tag("ExpectHangup")] | Annotated[ExpectSpeech, Tag("ExpectSpeech")]
    | Annotated[ExpectTransfer, Tag("ExpectTransfer")] | Annotated[Persona, Tag("Persona")]
    | Annotated[ExpectNoBargeIn, Tag("ExpectNoBargeIn")] | Annotated[Noise, Tag("Noise")],
    Discriminator(_step_kind, custom_error_type="unknown_step",
                  custom_error_message=f"not a step; steps are {', '.join(_STEPS)}"),
]


class Script(_Strict):
    name: str
    target: str | None = None
    codecs: list[str] = ["PCMU"]
    expect_status: int = Field(200, ge=100, le=699)
    dial: Dial = Dial()
    answer_timeout_s: float = Field(15.0, gt=0)
    max_duration_s: float = Field(300.0, gt=0)
    network: LineImpairment | None = None
    """A bad line for this script's calls (the command line's --loss/--jitter/--reorder/--skew replace it)."""
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


def uses_asr(script: Script) -> set[str]:
    """The ASR engines the script's `expect_speech`, `persona` and `backchannel` (with `then_says`) steps need."""
    return ({s.expect_speech.engine for s in script.steps if isinstance(s, ExpectSpeech)}
            | {s.persona.engine for s in script.steps if isinstance(s, Persona)}
            | {s.backchannel.engine for s in script.steps if isinstance(s, Backchannel) and s.backchannel.then_says})


def load_script(path: str | Path) -> Script:
    return validate_yaml(read_text(path), str(path), Script)
