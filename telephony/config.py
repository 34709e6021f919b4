"""The gateway's one YAML config, validated into typed objects.

pydantic does the validation; this module only adds what it cannot: the YAML line of each error, so that
`voicegate check` prints `file:line: field: what is wrong`. Secrets never live in the file: options whose name
ends in `_env` name an environment variable.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from agents.config import AgentConfig, CascadedAgentConfig, HybridAgentConfig, hybrid_parts
from agents.cost import Prices, s2s_per_min
from agents.speech.tts import TtsError, check_voice
from agents.spend import SpendCap

KNOWN_CODECS = ("G722", "PCMU", "PCMA")
M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SipConfig(_Strict):
    listen: str = "0.0.0.0"
    port: int = Field(5060, ge=1, le=65535)
    transports: list[Literal["udp", "tcp"]] = ["udp", "tcp"]
    public_address: str | None = None
    """Address written into Contact and SDP when the gateway sits behind NAT."""
    user_agent: str = "voicegate"

    @field_validator("listen")
    @classmethod
    def _ip(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v


class RtpConfig(_Strict):
    port_min: int = Field(20000, ge=1024, le=65534)
    port_max: int = Field(20999, ge=1025, le=65535)

    @model_validator(mode="after")
    def _range(self) -> RtpConfig:
        if self.port_max <= self.port_min:
            raise ValueError("port_max must be above port_min")
        return self


class MediaConfig(_Strict):
    codecs: list[str] = list(KNOWN_CODECS)
    """Preference order; G722 carries real 16 kHz audio, so it comes first when offered."""
    jitter_buffer_ms: int = Field(20, ge=0, le=500)

    @field_validator("codecs")
    @classmethod
    def _codecs(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c.upper() not in KNOWN_CODECS]
        if bad:
            raise ValueError(f"unknown codec {bad[0]!r}; known: {', '.join(KNOWN_CODECS)}")
        if not v:
            raise ValueError("at least one codec is needed")
        return [c.upper() for c in v]


class BargeInConfig(_Strict):
    enabled: bool = True
    onset_frames: int = Field(2, ge=1, le=25)
    """Consecutive 20 ms speech frames that pause playout (same clock tick)."""
    confirm_ms: int = Field(600, ge=20, le=5000)
    """Speech that lasts this long confirms the barge-in and cancels the agent's reply."""
    resume_ms: int = Field(300, ge=20, le=5000)
    """Silence after a pause that resumes playout where it paused (a backchannel or a click)."""
    echo_margin_db: float = Field(6.0, ge=0, le=40)
    """Inbound audio must be this far above the loudest frame we played 0-500 ms ago minus the echo loss."""
    noise_margin_db: float = Field(12.0, ge=0, le=40)
    vad_aggressiveness: int = Field(2, ge=0, le=3)


class TimeoutsConfig(_Strict):
    rtp_inactivity_s: float = Field(30.0, gt=0)
    max_call_s: float = Field(3600.0, gt=0)
    silence_reprompt_s: float = Field(10.0, gt=0)
    silence_hangup_s: float = Field(20.0, gt=0)
    shutdown_grace_s: float = Field(10.0, ge=0)


class RecordsConfig(_Strict):
    enabled: bool = True
    path: str = "records/calls.db"
    """SQLite database, one row per finished call; a relative path is relative to the config file's folder."""
    audit_path: str = "records/audit.jsonl"
    """The hash-chained audit log (erasures); relative like `path`."""
    recordings_path: str = "records/recordings"
    """Folder of the call recordings of routes with `recording:`; relative like `path`."""
    retention_days: float | None = Field(None, gt=0)
    """`voicegate purge` deletes calls older than this (with their recordings), unless their route says otherwise;
    none: kept until erased."""

    def under(self, folder: Path) -> RecordsConfig:
        """This section with its paths made absolute, relative to `folder`."""
        return self.model_copy(update={k: str(folder.absolute() / Path(getattr(self, k)).expanduser())
                                       for k in ("path", "audit_path", "recordings_path")})


class MetricsConfig(_Strict):
    enabled: bool = False
    listen: str = "127.0.0.1"
    """Loopback by default: the endpoint has no authentication."""
    port: int = Field(9464, ge=1, le=65535)
    """HTTP port of `/metrics` (Prometheus text format) and `/healthz`."""

    @field_validator("listen")
    @classmethod
    def _ip(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v


class RecordingConfig(_Strict):
    enabled: bool = True
    pause_code: str | None = None
    """DTMF keys (e.g. `*1`) that pause the recording: both channels record silence until `resume_code`."""
    resume_code: str | None = None

    @field_validator("pause_code", "resume_code")
    @classmethod
    def _keys(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9*#A-D]{1,8}", v):
            raise ValueError("a DTMF code is 1-8 of the keys 0-9 * # A-D")
        return v

    @model_validator(mode="after")
    def _pair(self) -> RecordingConfig:
        if (self.pause_code is None) != (self.resume_code is None):
            raise ValueError("pause_code and resume_code go together")
        if self.pause_code is not None and self.pause_code == self.resume_code:
            raise ValueError("pause_code and resume_code must differ")
        return self


class AnnouncementConfig(_Strict):
    text: str = Field(min_length=1)
    """Spoken before the agent starts (not interruptible): consent to recording, AI disclosure."""
    voice: str | None = None
    """`joe` (piper) or an espeak-ng voice; default `joe`."""
    consent_key: str | None = Field(None, pattern=r"^[0-9*#]$")
    """A key the caller must press to go on; without it the call ends (reason `no_consent`)."""
    timeout_s: float = Field(8.0, gt=0, le=60)
    """How long after the announcement the consent key is waited for."""

    @field_validator("voice")
    @classmethod
    def _voice(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                check_voice(v)
            except TtsError as e:
                raise ValueError(str(e)) from None
        return v


class RouteConfig(_Strict):
    match: str
    """Called user part: an exact number, a regular expression in slashes (`/^44/`), or `*` for the default."""
    agent: str
    recording: RecordingConfig | None = None
    """Record this route's calls as stereo WAV (caller left, agent right) in `records.recordings_path`."""
    announcement: AnnouncementConfig | None = None
    retention_days: float | None = Field(None, gt=0)
    """Days this route's call records and recordings are kept (`voicegate purge`); default `records.retention_days`."""

    @field_validator("announcement", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        return {"text": v} if isinstance(v, str) else v

    @field_validator("match")
    @classmethod
    def _regex(cls, v: str) -> str:
        if len(v) > 1 and v.startswith("/") and v.endswith("/"):
            re.compile(v[1:-1])
        return v

    def matches(self, user: str) -> bool:
        if self.match == "*":
            return True
        if len(self.match) > 1 and self.match.startswith("/") and self.match.endswith("/"):
            return re.search(self.match[1:-1], user) is not None
        return self.match == user


class Config(_Strict):
    sip: SipConfig = SipConfig()
    rtp: RtpConfig = RtpConfig()
    media: MediaConfig = MediaConfig()
    barge_in: BargeInConfig = BargeInConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    agents: dict[str, AgentConfig]
    routes: list[RouteConfig]
    records: RecordsConfig = RecordsConfig()
    prices: Prices = Prices()
    metrics: MetricsConfig = MetricsConfig()
    spend: dict[str, SpendCap] = {}
    """Spend caps by agent name (agents.spend), priced with `prices`."""

    @model_validator(mode="after")
    def _routes(self) -> Config:
        for i, r in enumerate(self.routes):
            if r.agent not in self.agents:
                raise ValueError(f"routes[{i}] names unknown agent {r.agent!r}")
        return self

    @field_validator("spend")
    @classmethod
    def _spend(cls, v: dict[str, SpendCap], info: ValidationInfo) -> dict[str, SpendCap]:
        agents: dict[str, AgentConfig] = info.data.get("agents") or {}
        for name, cap in v.items():
            if name not in agents:
                raise ValueError(f"names unknown agent {name!r}")
            if cap.cascade is not None and not isinstance(agents.get(cap.cascade), CascadedAgentConfig):
                raise ValueError(f"{name}.cascade: {cap.cascade!r} is not a configured cascaded agent")
        return v

    @model_validator(mode="after")
    def _hybrids(self) -> Config:
        for name, agent in self.agents.items():
            if isinstance(agent, HybridAgentConfig):
                _, s2s = hybrid_parts(name, agent, self.agents)
                if agent.budget is not None and agent.budget.usd_per_min is None and not s2s_per_min(
                        self.prices, s2s.type):
                    raise ValueError(f"agents.{name}.budget: no usd_per_min, and prices.s2s.{s2s.type} is 0")
        return self

    def route(self, user: str) -> str | None:
        """The agent name for a called user part, or None when no route matches."""
        for r in self.routes:
            if r.matches(user):
                return r.agent
        return None

    def route_for(self, user: str) -> RouteConfig | None:
        """The first route that matches a called user part."""
        return next((r for r in self.routes if r.matches(user)), None)

    def retention_days(self, user: str) -> float | None:
        """How many days the calls to a called user part are kept (None: until erased)."""
        route = self.route_for(user)
        if route is not None and route.retention_days is not None:
            return route.retention_days
        return self.records.retention_days


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class ConfigError(Exception):
    """The config file is invalid; `issues` names each fault with its line."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def _line_index(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out[(*path, k.value)] = k.start_mark.line + 1
            _line_index(v, (*path, k.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_index(v, (*path, i), out)


def _nearest_line(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    # pydantic inserts union tags (`SayStep`, `scripted`) into loc; drop parts that are not in the YAML.
    path: tuple[Any, ...] = ()
    best = lines.get((), 1)
    for part in loc:
        key = (*path, str(part) if not isinstance(part, int) else part)
        if key in lines:
            path = key
            best = lines[key]
    return best


def validate_yaml(text: str, file: str, model: type[M]) -> M:
    """Validate YAML text into `model`; raise ConfigError naming every fault with its line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([ConfigIssue(file, line, "(yaml)", str(getattr(e, "problem", e)))]) from None
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(file, 1, "(top)", "the file must be a YAML mapping")])
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _line_index(node, (), lines)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        issues = []
        for err in e.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc) or "(top)"
            msg = err["msg"].removeprefix("Value error, ")
            issues.append(ConfigIssue(file, _nearest_line(lines, loc), field, msg))
        raise ConfigError(issues) from None


def parse_config(text: str, file: str = "<config>") -> Config:
    return validate_yaml(text, file, Config)


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise ConfigError([ConfigIssue(str(path), 0, "(file)", e.strerror or str(e))]) from None


def load_config(path: str | Path) -> Config:
    cfg = parse_config(read_text(path), str(path))
    return cfg.model_copy(update={"records": cfg.records.under(Path(path).parent)})
