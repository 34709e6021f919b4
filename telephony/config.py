"""The gateway's one YAML config, validated into typed objects.

pydantic does the validation; this module only adds what it cannot: the YAML line of each error, so that
`voicegate check` prints `file:line: field: what is wrong`. Secrets never live in the file: options whose name
ends in `_env` name an environment variable.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agents.config import AgentConfig, HybridAgentConfig, hybrid_parts
from agents.cost import Prices

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
    path: str = "records/calls.jsonl"
    """One JSON line per finished call; a relative path is relative to the config file's folder."""

    def under(self, folder: Path) -> RecordsConfig:
        """This section with `path` made absolute, relative to `folder`."""
        return self.model_copy(update={"path": str(folder.absolute() / Path(self.path).expanduser())})


class RouteConfig(_Strict):
    match: str
    """Called user part: an exact number, a regular expression in slashes (`/^44/`), or `*` for the default."""
    agent: str

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


class MediaStreamTransport(_Strict):
    """A Twilio Media Streams-shaped WebSocket server (telephony/transports/media_stream_ws.py)."""

    listen: str = "127.0.0.1"
    port: int = Field(8765, ge=1, le=65535)
    path: str = "/media"
    token_env: str | None = None
    """Environment variable holding a token the client must send as `Authorization: Bearer TOKEN`."""
    agent: str | None = None
    """The agent for a stream whose `start.customParameters.to` is absent or matches no route."""

    @field_validator("listen")
    @classmethod
    def _ip(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"path must start with '/', got {v!r}")
        return v


class AudioSocketTransport(_Strict):
    """An Asterisk AudioSocket server (telephony/transports/audiosocket.py)."""

    listen: str = "127.0.0.1"
    port: int = Field(9092, ge=1, le=65535)
    agent: str | None = None
    """The agent for a call whose UUID is not in `uuids`."""
    uuids: dict[str, str] = {}
    """Call UUID (as the dialplan's AudioSocket() passes it) -> agent name."""

    @field_validator("listen")
    @classmethod
    def _ip(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v

    @field_validator("uuids")
    @classmethod
    def _uuids(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for k, agent in v.items():
            try:
                out[str(uuid.UUID(k))] = agent
            except ValueError:
                raise ValueError(f"{k!r} is not a UUID") from None
        return out

    @model_validator(mode="after")
    def _some_agent(self) -> AudioSocketTransport:
        if self.agent is None and not self.uuids:
            raise ValueError("name a default agent or map uuids to agents; otherwise no call can be answered")
        return self


class WebRtcTransport(_Strict):
    """The browser softphone: `/phone` and its WebRTC signalling (telephony/transports/webrtc.py)."""

    listen: str = "127.0.0.1"
    port: int = Field(8766, ge=1, le=65535)
    token_env: str | None = None
    """Environment variable holding a token the page's address must carry (`/phone?token=TOKEN`)."""
    agent: str | None = None
    """The agent for a dialled number that matches no route."""

    @field_validator("listen")
    @classmethod
    def _ip(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v


class TransportsConfig(_Strict):
    media_stream: MediaStreamTransport | None = None
    audiosocket: AudioSocketTransport | None = None
    webrtc: WebRtcTransport | None = None


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
    transports: TransportsConfig = TransportsConfig()

    @model_validator(mode="after")
    def _routes(self) -> Config:
        for i, r in enumerate(self.routes):
            if r.agent not in self.agents:
                raise ValueError(f"routes[{i}] names unknown agent {r.agent!r}")
        return self

    @field_validator("transports")
    @classmethod
    def _transports(cls, v: TransportsConfig, info: ValidationInfo) -> TransportsConfig:
        """Transport agents exist and ports do not collide (agents and sip are validated before this field)."""
        agents, sip = info.data.get("agents") or {}, info.data.get("sip")
        ms, au, wr = v.media_stream, v.audiosocket, v.webrtc
        named = [("media_stream.agent", ms.agent if ms else None), ("audiosocket.agent", au.agent if au else None),
                 ("webrtc.agent", wr.agent if wr else None),
                 *((f"audiosocket.uuids.{k}", a) for k, a in (au.uuids if au else {}).items())]
        for where, agent in named:
            if agent is not None and agents and agent not in agents:
                raise ValueError(f"{where} names unknown agent {agent!r}")
        tcp = [("sip.port", sip.port)] if sip is not None and "tcp" in sip.transports else []
        tcp += [(f"{n}.port", t.port) for n, t in (("media_stream", ms), ("audiosocket", au), ("webrtc", wr))
                if t is not None]
        for i, (a, port) in enumerate(tcp):
            for b, other in tcp[i + 1 :]:
                if port == other:
                    raise ValueError(f"{a} and {b} both want TCP port {port}")
        return v

    @model_validator(mode="after")
    def _hybrids(self) -> Config:
        for name, agent in self.agents.items():
            if isinstance(agent, HybridAgentConfig):
                hybrid_parts(name, agent, self.agents)
        return self

    def route(self, user: str) -> str | None:
        """The agent name for a called user part, or None when no route matches."""
        for r in self.routes:
            if r.matches(user):
                return r.agent
        return None


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
