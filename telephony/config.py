"""The gateway's one YAML config, validated into typed objects.

pydantic does the validation; this module only adds what it cannot: the YAML line of each error, so that
`voicegate check` prints `file:line: field: what is wrong`. Secrets never live in the file: options whose name
ends in `_env` name an environment variable.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from agents.config import AgentConfig, CascadedAgentConfig, HybridAgentConfig, check_tools, hybrid_parts
from agents.cost import Prices, s2s_per_min
from agents.gemini_live import GeminiLiveConfig
from agents.openai_realtime import OpenAIRealtimeConfig
from agents.patterns import Regex, TextOrRegex
from agents.speech.tts import TtsError, check_voice
from agents.spend import SpendCap
from agents.tools import ToolConfig
from media.barge_in import DetectorSettings
from media.echo_path import EchoPathSettings
from media.tones import ToneSettings
from telephony.sip_uri import parse_sip_uri

KNOWN_CODECS = ("G722", "PCMU", "PCMA")
DtmfMode = Literal["rfc4733", "info"]
"""How an agent's keys go out: RFC 4733 events in the RTP stream, or SIP INFO (`application/dtmf-relay`)."""
M = TypeVar("M", bound=BaseModel)


def _ip(v: str) -> str:
    ipaddress.ip_address(v)
    return v


IpAddress = Annotated[str, AfterValidator(_ip)]
"""A listening address: an IPv4 or IPv6 address, not a host name."""


def _net(v: str) -> str:
    ipaddress.ip_network(v, strict=False)
    return v


NetworkText = Annotated[str, AfterValidator(_net)]
"""An address or network (`192.168.1.0/24`), each checked on its own so an error names its list item's line."""


def env_var(what: str) -> AfterValidator:
    """For an option naming an environment variable (`password_env`): it must be set and non-empty; `what` is what
    it holds, for the error."""

    def check(v: str) -> str:
        if not os.environ.get(v):
            raise ValueError(f"environment variable {v} ({what}) is not set or empty")
        return v

    return AfterValidator(check)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def off_loopback_without(listen: str, guard: object, needs: str) -> None:
    """Refuse a listener on an address other machines reach (`0.0.0.0`, a LAN address) whose `guard` (a token
    option, an allow list) is unset: raised at the section's `listen`, so the error names its line."""
    if guard or ipaddress.ip_address(listen).is_loopback:
        return
    raise ValidationError.from_exception_data("listener", [InitErrorDetails(
        type=PydanticCustomError("open_listener", "{msg}", {
            "msg": f"{listen} is not a loopback address: set {needs}, or listen on 127.0.0.1"}),
        loc=("listen",), input=listen)])


class _TlsFiles(_Strict):
    """A TLS section's certificate, key and CA files must exist (each section declares which it has)."""

    @field_validator("cert_file", "key_file", "ca_file", check_fields=False)
    @classmethod
    def _readable(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError(f"no such file: {v}")
        return v


class SipTlsConfig(_TlsFiles):
    """SIP over TLS: the listener's certificate, and whom outgoing TLS connections (trunks) trust."""

    port: int = Field(5061, ge=1, le=65535)
    cert_file: str
    key_file: str
    ca_file: str | None = None
    """CA certificates (PEM) that verify servers we connect to and clients' certificates; the system's if none."""
    verify_server: bool = True
    """Refuse a trunk whose certificate does not verify (chain and name)."""
    require_client_cert: bool = False
    """Mutual TLS: refuse TLS clients without a certificate that `ca_file` verifies."""

    @model_validator(mode="after")
    def _loadable(self) -> SipTlsConfig:
        """pjsip would start with a broken certificate and fail every handshake: load them here to name it."""
        check_tls_files(self.cert_file, self.key_file, self.ca_file)
        return self


def check_tls_files(cert_file: str, key_file: str, ca_file: str | None) -> None:
    """Load a certificate, its key and CA certificates as TLS would; raise ValueError naming the one that fails."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(Path(cert_file).expanduser(), Path(key_file).expanduser())
    except (ssl.SSLError, OSError) as e:
        raise ValueError(f"cannot use cert_file {cert_file} with key_file {key_file}: {e}") from None
    if ca_file:
        check_ca_file(ca_file, ctx)


def check_ca_file(ca_file: str, ctx: ssl.SSLContext | None = None) -> None:
    try:
        (ctx or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)).load_verify_locations(Path(ca_file).expanduser())
    except (ssl.SSLError, OSError) as e:
        raise ValueError(f"ca_file {ca_file} holds no usable CA certificate: {e}") from None


class TrunkTlsConfig(_TlsFiles):
    """Mutual TLS with a trunk: its own client identity for its registrar or proxy, instead of the listener's, and
    client certificates its own calls must come with."""

    cert_file: str | None = None
    """The client certificate (PEM) presented to this trunk's servers; none: the listener's (`sip.tls`)."""
    key_file: str | None = None
    ca_file: str | None = None
    """CA certificates (PEM) that verify this trunk's servers, default `sip.tls.ca_file`, else the system's; and,
    with `require_client_cert`, the certificates of its calls."""
    verify_server: bool = True
    """Refuse a server whose certificate does not verify (chain and name)."""
    require_client_cert: bool = False
    """Admit this trunk's calls only over TLS with a client certificate `ca_file` verifies; others get 403
    (telephony/client_certs.py). The TLS listener then asks every client for a certificate but requires none."""

    @model_validator(mode="after")
    def _loadable(self) -> TrunkTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.require_client_cert and not self.ca_file:
            raise ValueError("require_client_cert needs ca_file: the CA that signs this trunk's client certificates")
        if self.cert_file is None and not self.require_client_cert:
            raise ValueError("a trunk's tls needs cert_file and key_file, or require_client_cert")
        if self.cert_file is not None and self.key_file is not None:
            check_tls_files(self.cert_file, self.key_file, self.ca_file)
        elif self.ca_file:
            check_ca_file(self.ca_file)
        return self


class SipUserConfig(_Strict):
    """Digest credentials of one caller that comes from no trunk (a softphone, a PBX)."""

    password_env: Annotated[str, env_var("the user's password")]
    """Name of the environment variable holding the password (never the password itself)."""

    @property
    def password(self) -> str:
        return os.environ.get(self.password_env, "")


class InviteRateConfig(_Strict):
    """INVITEs one source address may send in `window_s` before the next get 503 with Retry-After."""

    per_source: int = Field(ge=1, le=100000)
    window_s: float = Field(10.0, gt=0, le=3600)


class SipConfig(_Strict):
    listen: IpAddress = "0.0.0.0"
    port: int = Field(5060, ge=1, le=65535)
    transports: list[Literal["udp", "tcp", "tls"]] = ["udp", "tcp"]
    public_address: str | None = None
    """Address written into Contact and SDP when the gateway sits behind NAT."""
    user_agent: str = "voicegate"
    tls: SipTlsConfig | None = None
    """Needed when `transports` has tls."""
    allow: list[NetworkText] = []
    """Addresses or networks calls from no trunk may come from (like a trunk's `allow`); none: any address, unless
    `users` asks for credentials. A call from elsewhere gets 403, or with `users` a digest challenge."""
    users: dict[str, SipUserConfig] = {}
    """Digest credentials (username: {password_env}) for calls from no trunk: a source outside `allow` is
    challenged (401) and admitted with one of them (the trunks' `inbound_auth`, with many users)."""
    realm: str = Field("voicegate", min_length=1)
    """The realm of the challenge to `users`."""
    contact: str | None = None
    """The Contact of the gateway's own calls (`sip:user@host:port`); default its own address. Workers behind the
    front door with `public_address` name the front door's."""
    front_door: list[NetworkText] = []
    """Addresses of the Kamailio front door in front of this gateway (a worker on another machine): the caller's
    address of an INVITE from there is the one the front door names in its X-VG-Source header."""
    outbound_proxy: str | None = None
    """`sip:host:port`: every request the gateway starts (REGISTER, OPTIONS keepalives, calls out) goes through it,
    before a trunk's own `outbound_proxy`. Workers behind the front door get the front door's."""
    max_message_bytes: int = Field(16384, ge=1024, le=65535)
    """A longer INVITE is refused with 513 Message Too Large (telephony/invite_rate.py)."""
    invite_rate: InviteRateConfig | None = None
    """Per-source INVITE limit (a flood would take the call slots); none: unlimited (a carrier sends every call from
    one address)."""

    @field_validator("contact", "outbound_proxy")
    @classmethod
    def _contact(cls, v: str | None) -> str | None:
        if v is not None:
            parse_sip_uri(v)
        return v

    @model_validator(mode="after")
    def _tls(self) -> SipConfig:
        if "tls" in self.transports and self.tls is None:
            raise ValueError("transports has tls but there is no sip.tls section (cert_file, key_file)")
        return self


class RtpConfig(_Strict):
    port_min: int = Field(20000, ge=1024, le=65534)
    port_max: int = Field(20999, ge=1025, le=65535)
    public_address: str | None = None
    """Address written into SDP only (media), where it differs from the signalling's; default
    `sip.public_address`. Workers behind the front door get `sip.public_address` here."""

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


def _field_error(field: str, msg: str) -> ValidationError:
    """A fault found across fields, raised at `field` so the error names its line."""
    return ValidationError.from_exception_data("settings", [InitErrorDetails(
        type=PydanticCustomError("bad_setting", "{msg}", {"msg": msg}), loc=(field,), input=None)])


_DETECTOR, _ECHO, _TONES = DetectorSettings(), EchoPathSettings(), ToneSettings()
"""The sans-IO cores' defaults, which the config's defaults are (one place for each figure)."""


class EchoPathConfig(_Strict):
    """`barge_in.advanced.echo_path`: how the echo path's delay and loss are estimated. Each field, its default and
    its meaning are `media.echo_path.EchoPathSettings`'s; this class adds only the bounds a config may set."""

    max_lag_frames: int = Field(_ECHO.max_lag_frames, ge=1, le=100)
    none_lag_frames: int = Field(_ECHO.none_lag_frames, ge=1, le=100)
    window_frames: int = Field(_ECHO.window_frames, ge=20, le=500)
    every_frames: int = Field(_ECHO.every_frames, ge=1, le=100)
    active_dbfs: float = Field(_ECHO.active_dbfs, ge=-90, le=0)
    min_active_frames: int = Field(_ECHO.min_active_frames, ge=2, le=500)
    corr_echo: float = Field(_ECHO.corr_echo, gt=0, le=1)
    corr_none: float = Field(_ECHO.corr_none, ge=-1, lt=1)
    loss_percentile: float = Field(_ECHO.loss_percentile, ge=50, le=100)
    spread_frames: int = Field(_ECHO.spread_frames, ge=0, le=10)
    none_loss_db: float = Field(_ECHO.none_loss_db, gt=0, le=90)
    burst_min_frames: int = Field(_ECHO.burst_min_frames, ge=2, le=100)
    corr_burst: float = Field(_ECHO.corr_burst, gt=0, le=1)
    burst_spread_db: float = Field(_ECHO.burst_spread_db, gt=0, le=60)
    burst_quiet_db: float = Field(_ECHO.burst_quiet_db, ge=0, le=60)
    burst_max_loss_db: float = Field(_ECHO.burst_max_loss_db, ge=-60, le=0)
    drift_estimates: int = Field(_ECHO.drift_estimates, ge=1, le=100)
    max_drift_frames: int = Field(_ECHO.max_drift_frames, ge=0, le=50)
    min_echo_frames: int = Field(_ECHO.min_echo_frames, ge=0, le=1000)
    echo_over_noise_db: float = Field(_ECHO.echo_over_noise_db, ge=0, le=60)
    onset_context_frames: int = Field(_ECHO.onset_context_frames, ge=2, le=500)
    onset_min_frames: int = Field(_ECHO.onset_min_frames, ge=2, le=500)
    corr_onset: float = Field(_ECHO.corr_onset, gt=0, le=1)
    onset_guard_frames: int = Field(_ECHO.onset_guard_frames, ge=0, le=50)
    onset_max_loss_db: float = Field(_ECHO.onset_max_loss_db, ge=-60, le=0)

    @model_validator(mode="after")
    def _consistent(self) -> EchoPathConfig:
        if self.corr_none >= self.corr_echo:
            raise _field_error("corr_none", f"corr_none ({self.corr_none}) must be below corr_echo ({self.corr_echo})")
        if self.min_active_frames > self.window_frames:
            raise _field_error("min_active_frames", f"min_active_frames ({self.min_active_frames}) must not exceed "
                               f"window_frames ({self.window_frames}): no estimate could ever decide")
        if self.onset_min_frames > min(self.onset_context_frames, self.window_frames):
            raise _field_error("onset_min_frames", f"onset_min_frames ({self.onset_min_frames}) must not exceed "
                               f"onset_context_frames ({self.onset_context_frames}) or window_frames "
                               f"({self.window_frames}): no burst could ever be explained")
        return self


class ToneConfig(_Strict):
    """`barge_in.advanced.tones`: when an inbound frame is a telephony tone, never speech. Each field, its default and
    its meaning are `media.tones.ToneSettings`'s; this class adds only the bounds."""

    min_share: float = Field(_TONES.min_share, gt=0.5, le=1)
    second_peak: float = Field(_TONES.second_peak, ge=0, lt=0.5)
    level_steady_db: float = Field(_TONES.level_steady_db, gt=0, le=20)


class BargeInAdvancedConfig(_Strict):
    """`barge_in.advanced`: the detector's thresholds beyond the usual five. Each field, its default and its meaning
    are `media.barge_in.DetectorSettings`'s (the defaults are what the labelled clip set, tests/clipset.py, was
    tuned and measured with); this class adds only the bounds."""

    min_level_dbfs: float = Field(_DETECTOR.min_level_dbfs, ge=-96, le=0)
    echo_window_ms: int = Field(_DETECTOR.echo_window_ms, ge=20, le=2000)
    speech_hangover_ms: int = Field(_DETECTOR.speech_hangover_ms, ge=20, le=5000)
    dtmf_guard_ms: int = Field(_DETECTOR.dtmf_guard_ms, ge=0, le=5000)
    noise_window_frames: int = Field(_DETECTOR.noise_window_frames, ge=5, le=1500)
    initial_echo_gain_db: float = Field(_DETECTOR.initial_echo_gain_db, ge=-60, le=0)
    echo_gain_floor_db: float = Field(_DETECTOR.echo_gain_floor_db, ge=-90, le=0)
    echo_gain_decay_db: float = Field(_DETECTOR.echo_gain_decay_db, ge=0, le=10)
    echo_gain_rise_db: float = Field(_DETECTOR.echo_gain_rise_db, ge=0, le=20)
    ref_active_dbfs: float = Field(_DETECTOR.ref_active_dbfs, ge=-90, le=0)
    echo_burst_window_ms: int = Field(_DETECTOR.echo_burst_window_ms, ge=20, le=10000)
    echo_path: EchoPathConfig = EchoPathConfig()
    tones: ToneConfig = ToneConfig()

    @model_validator(mode="after")
    def _consistent(self) -> BargeInAdvancedConfig:
        if self.echo_gain_floor_db > self.initial_echo_gain_db:
            raise _field_error("echo_gain_floor_db", f"echo_gain_floor_db ({self.echo_gain_floor_db}) must not be "
                               f"above initial_echo_gain_db ({self.initial_echo_gain_db})")
        return self


class BargeInConfig(_Strict):
    """`barge_in`: the five usual thresholds are `media.barge_in.DetectorSettings`'s (meaning and default there)."""

    enabled: bool = True
    onset_frames: int = Field(_DETECTOR.onset_frames, ge=1, le=25)
    confirm_ms: int = Field(_DETECTOR.confirm_ms, ge=20, le=5000)
    resume_ms: int = Field(_DETECTOR.resume_ms, ge=20, le=5000)
    echo_margin_db: float = Field(_DETECTOR.echo_margin_db, ge=0, le=40)
    noise_margin_db: float = Field(_DETECTOR.noise_margin_db, ge=0, le=40)
    vad_aggressiveness: int = Field(2, ge=0, le=3)
    """WebRTC VAD's mode, 0 (least) to 3 (most aggressive in calling audio non-speech)."""
    advanced: BargeInAdvancedConfig = BargeInAdvancedConfig()
    """The detector's other thresholds; the defaults are what the labelled clip set was tuned and measured with."""

    def settings(self) -> DetectorSettings:
        """The sans-IO detector's settings (media/barge_in.py), every threshold from this section."""
        a = self.advanced
        return DetectorSettings(
            onset_frames=self.onset_frames, confirm_ms=self.confirm_ms, resume_ms=self.resume_ms,
            echo_margin_db=self.echo_margin_db, noise_margin_db=self.noise_margin_db,
            **a.model_dump(exclude={"echo_path", "tones"}),
            echo=EchoPathSettings(**a.echo_path.model_dump()), tones=ToneSettings(**a.tones.model_dump()))


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
    purge_every_h: float = Field(24.0, gt=0)
    """`voicegate serve` runs the purge at start and then this often (telephony/purge_job.py), with any
    `retention_days` set."""
    sip_trace: bool = False
    """Write every SIP message of each call to `sip/<Call-ID>.sip` beside `path` (named in the call's record)."""
    pcap_path: str = "records/pcap"
    """Folder of the pcap files of calls captured on request (a route's `pcap`, or the control endpoint)."""

    @property
    def sip_trace_path(self) -> Path:
        return Path(self.path).parent / "sip"

    def under(self, folder: Path) -> RecordsConfig:
        """This section with its paths made absolute, relative to `folder`."""
        return self.model_copy(update={k: str(folder.absolute() / Path(getattr(self, k)).expanduser())
                                       for k in ("path", "audit_path", "recordings_path", "pcap_path")})


class MetricsConfig(_Strict):
    enabled: bool = False
    listen: IpAddress = "127.0.0.1"
    """Loopback by default; any other address needs `token_env`."""
    port: int = Field(9464, ge=1, le=65535)
    """HTTP port of `/metrics` (Prometheus text format) and `/healthz`."""
    token_env: Annotated[str, env_var("the metrics token")] | None = None
    """Environment variable holding a token every request must send as `Authorization: Bearer TOKEN`."""

    @model_validator(mode="after")
    def _guarded(self) -> MetricsConfig:
        off_loopback_without(self.listen, self.token_env, "metrics.token_env (a bearer token)")
        return self

    @property
    def token(self) -> str | None:
        return os.environ.get(self.token_env) if self.token_env else None


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
    early_media: bool = False
    """Play it before answering, as early media (183 Session Progress with SDP), then answer (200) and start the
    agent. SIP calls only; other transports play it after the answer as usual."""

    @model_validator(mode="after")
    def _early(self) -> AnnouncementConfig:
        if self.early_media and self.consent_key is not None:
            raise ValueError("early_media cannot take a consent_key: a call not answered yet may carry no audio "
                             "(nor RFC 4733 keys) from the caller (early media is often one-way)")
        return self

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
    match: TextOrRegex
    """Called user part: an exact number, a regular expression in slashes (`/^44/`), or `*` for the default."""
    agent: str
    recording: RecordingConfig | None = None
    """Record this route's calls as stereo WAV (caller left, agent right) in `records.recordings_path`."""
    announcement: AnnouncementConfig | None = None
    retention_days: float | None = Field(None, gt=0)
    """Days this route's call records and recordings are kept (`voicegate purge`); default `records.retention_days`."""
    pcap: bool = False
    """Write each call's SIP and RTP to `records.pcap_path/<Call-ID>.pcap` (telephony/pcap.py; needs
    `records.sip_trace` and tcpdump)."""
    dtmf_mode: DtmfMode | None = None
    """How the agent's keys go out on this route's calls; none: the trunk's `dtmf_mode` (rfc4733 without one)."""

    @field_validator("announcement", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        return {"text": v} if isinstance(v, str) else v
    match_header: dict[str, TextOrRegex] = {}
    """SIP headers the INVITE must also carry (name: exact value or `/regex/`), e.g. `X-Lang: /^de/`."""
    transfer_allowed: list[TextOrRegex] = []
    """Transfer targets this route's agent may send callers to (exact or `/regex/`, matched against
    `sip:user@host[:port]`); anything else is refused (telephony/transfer_guard.py). None: only the targets the
    agent's config names."""

    def matches(self, user: str, headers: Mapping[str, str] | None = None) -> bool:
        if self.match_header:
            got = {k.lower(): v for k, v in (headers or {}).items()}
            for name, want in self.match_header.items():
                if name.lower() not in got or not _value_matches(want, got[name.lower()]):
                    return False
        return self.match == "*" or _value_matches(self.match, user)


def _value_matches(pattern: str, value: str) -> bool:
    if len(pattern) > 1 and pattern.startswith("/") and pattern.endswith("/"):
        return re.search(pattern[1:-1], value) is not None
    return pattern == value


class TrunkConfig(_Strict):
    """A SIP trunk (carrier or PBX) voicegate registers with and takes calls from."""

    registrar: str
    """`sip:host[:port]`: where REGISTER goes; its resolved addresses may send calls for this trunk."""
    username: str
    password_env: Annotated[str, env_var("the trunk password")]
    """Name of the environment variable holding the password (never the password itself)."""
    realm: str = "*"
    """Digest realm the credentials are for; `*` answers any realm."""
    transport: Literal["udp", "tcp", "tls"] = "udp"
    expiry_s: int = Field(300, ge=10, le=86400)
    """Registration lifetime asked for; pjsua refreshes 5 s before it runs out (so at least 10)."""
    outbound_proxy: str | None = None
    srtp: Literal["off", "optional", "mandatory"] = "off"
    """SRTP with SDES keys for this trunk's calls: `mandatory` refuses a call without it (488)."""
    registers: bool = Field(True, alias="register")
    """`register: false` for a trunk that sends calls without a registration (its addresses still apply)."""
    contact: str | None = None
    """The Contact of its registration and calls (`sip:user@host:port`); none: pjsua's own address. Workers
    behind the front door register with the front door's."""
    retry_min_s: float = Field(2.0, gt=0, le=3600)
    """Wait after the first failed registration; doubles with each failure up to `retry_max_s`."""
    retry_max_s: float = Field(300.0, gt=0, le=86400)
    keepalive_s: float | None = Field(None, ge=1, le=3600)
    """Send the registrar an OPTIONS this often and report whether it answers (`trunk_keepalive` events,
    `voicegate trunks`); none: no pings (pjsua still sends UDP registrations its CRLF keepalive)."""
    routes: list[RouteConfig] = []
    """Called numbers (DIDs) of this trunk to agents, before the global `routes`."""
    allow: list[str] = []
    """Addresses or networks (besides the registrar's) this trunk's calls may come from."""
    inbound_auth: bool = False
    """Calls for this trunk from other addresses are challenged (401) and admitted with the trunk's username and
    password (digest) instead of refused."""
    caller_id: str | None = None
    """The number outbound calls on this trunk present (the From user part); default `username`."""
    allowed: list[Regex] = []
    """Outbound calls: regular expressions a dialled number must match whole (`\\+4930\\d{6,9}`); none: this
    trunk places no calls (the toll-fraud guard)."""
    max_calls_per_min: int | None = Field(None, ge=1, le=10000)
    """Outbound calls this trunk places in any minute at most (telephony/dial_rate.py); none: no limit."""
    tls: TrunkTlsConfig | None = None
    """With `transport: tls`: this trunk's own client certificate (and CA) for its TLS connections, in place of
    `sip.tls`'s (telephony/trunk_tls.py)."""
    dtmf_mode: DtmfMode = "rfc4733"
    """How agents' keys go out on this trunk's calls (a route's own `dtmf_mode` comes first): `rfc4733` events in
    the RTP stream, or `info` (SIP INFO, `application/dtmf-relay`) for carriers that want keys in signalling."""

    @field_validator("caller_id")
    @classmethod
    def _caller_id(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\+?[0-9A-Za-z._-]{1,32}", v):
            raise ValueError(f"{v!r} is not a number or SIP user part")
        return v

    def allows(self, number: str) -> bool:
        """The number may be dialled on this trunk."""
        return any(re.fullmatch(p, number) for p in self.allowed)

    @field_validator("registrar", "outbound_proxy", "contact")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None:
            parse_sip_uri(v)
        return v

    @field_validator("allow")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for a in v:
            ipaddress.ip_network(a, strict=False)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrunkConfig:
        if parse_sip_uri(self.registrar).scheme == "sips" and self.transport != "tls":
            raise ValueError(f"a sips: registrar needs transport tls, not {self.transport}")
        given = parse_sip_uri(self.registrar).params.get("transport")
        if given is not None and given.lower() != self.transport:
            raise ValueError(f"registrar says transport={given} but transport is {self.transport}")
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s must be at least retry_min_s")
        return self

    @model_validator(mode="after")
    def _tls_transport(self) -> TrunkConfig:
        if self.tls is not None and self.transport != "tls":
            raise ValidationError.from_exception_data("TrunkConfig", [InitErrorDetails(
                type=PydanticCustomError("trunk_tls", "{msg}", {
                    "msg": f"a trunk's own TLS certificate needs transport: tls, not {self.transport}"}),
                loc=("tls",), input=self.tls)])
        return self

    @property
    def password(self) -> str:
        return os.environ.get(self.password_env, "")

    def route(self, user: str, headers: Mapping[str, str] | None = None) -> str | None:
        for r in self.routes:
            if r.matches(user, headers):
                return r.agent
        return None


class MediaStreamTransport(_Strict):
    """A Twilio Media Streams-shaped WebSocket server (telephony/transports/media_stream_ws.py)."""

    listen: IpAddress = "127.0.0.1"
    port: int = Field(8765, ge=1, le=65535)
    path: str = "/media"
    token_env: str | None = None
    """Environment variable holding a token the client must send as `Authorization: Bearer TOKEN`."""
    agent: str | None = None
    """The agent for a stream whose `start.customParameters.to` is absent or matches no route."""

    @model_validator(mode="after")
    def _guarded(self) -> MediaStreamTransport:
        off_loopback_without(self.listen, self.token_env, "transports.media_stream.token_env (a bearer token)")
        return self

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"path must start with '/', got {v!r}")
        return v


class AudioSocketTransport(_Strict):
    """An Asterisk AudioSocket server (telephony/transports/audiosocket.py)."""

    listen: IpAddress = "127.0.0.1"
    port: int = Field(9092, ge=1, le=65535)
    agent: str | None = None
    """The agent for a call whose UUID is not in `uuids`."""
    uuids: dict[str, str] = {}
    """Call UUID (as the dialplan's AudioSocket() passes it) -> agent name."""
    allow: list[NetworkText] = []
    """Addresses or networks connections may come from (checked on accept; others are closed at once); none: any.
    Needed to listen off loopback, since the protocol carries no credentials."""

    @model_validator(mode="after")
    def _guarded(self) -> AudioSocketTransport:
        off_loopback_without(self.listen, self.allow, "transports.audiosocket.allow (the Asterisk hosts' networks)")
        return self

    def admits(self, address: str) -> bool:
        """Whether a peer at `address` may connect."""
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return not self.allow or any(ip in ipaddress.ip_network(n, strict=False) for n in self.allow)

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

    listen: IpAddress = "127.0.0.1"
    port: int = Field(8766, ge=1, le=65535)
    token_env: str | None = None
    """Environment variable holding a token the page's address must carry (`/phone?token=TOKEN`); required when
    `listen` is not a loopback address."""
    agent: str | None = None
    """The agent for a dialled number that matches no route."""

    @model_validator(mode="after")
    def _token_off_loopback(self) -> WebRtcTransport:
        if self.token_env is None and not ipaddress.ip_address(self.listen).is_loopback:
            raise ValueError(f"listen {self.listen} is not a loopback address, so anyone who reaches it could call "
                             "the agents: set token_env (an environment variable holding the page's token)")
        return self


class ControlConfig(_Strict):
    """The control endpoint (`POST /calls` originates a call; `voicegate dial` uses it): HTTP with a bearer token."""

    listen: IpAddress = "127.0.0.1"
    """Loopback by default: the token travels in clear text."""
    port: int = Field(9465, ge=1, le=65535)
    token_env: Annotated[str, env_var("the control token")]
    """Environment variable holding the token clients send as `Authorization: Bearer TOKEN`."""
    allow_uris: list[Regex] = []
    """Regular expressions SIP URIs dialled directly (not through a trunk) must match whole; none: trunks only."""

    @property
    def token(self) -> str:
        return os.environ.get(self.token_env, "")


class TransportsConfig(_Strict):
    media_stream: MediaStreamTransport | None = None
    audiosocket: AudioSocketTransport | None = None
    webrtc: WebRtcTransport | None = None


class WhenFullConfig(_Strict):
    """The reply to a new call when every worker is full (some carriers take a 503 for the whole gateway down)."""

    reply: Literal[503, 486, 480, "announcement"] = 503
    """`announcement`: an extra worker answers, says `text` and hangs up (486 when it is full itself)."""
    retry_after_s: int = Field(30, ge=1, le=3600)
    """Sent as Retry-After with a 503."""
    text: str = Field("All our lines are busy. Please call again later. Goodbye.", min_length=1)
    voice: str = "joe"
    """`joe` (piper) or an espeak-ng voice."""

    @field_validator("voice")
    @classmethod
    def _voice(cls, v: str) -> str:
        try:
            check_voice(v)
        except TtsError as e:
            raise ValueError(str(e)) from None
        return v


class WorkersConfig(_Strict):
    """Worker processes (telephony/supervisor.py): each a gateway with its own SIP port and RTP range, and for more
    than one a Kamailio front door (telephony/frontdoor.py) on `sip.listen`:`sip.port`."""

    count: int = Field(1, ge=1, le=64)
    first_port: int = Field(5070, ge=1, le=65535)
    """With more than one worker, worker i listens on UDP 127.0.0.1:first_port+i."""
    dispatch: Literal["round_robin", "least_loaded"] = "round_robin"
    probe_interval_s: int = Field(2, ge=1, le=60)
    """Kamailio sends each worker an OPTIONS this often; a worker that fails one gets no new calls."""
    failover_timeout_s: float = Field(2.0, ge=0.2, le=30)
    """A worker that has not replied to an INVITE within this long is skipped for the next one."""
    flood_requests: int = Field(60, ge=1, le=100000)
    """Requests one source address may send per `flood_window_s` before the front door drops it (pike)."""
    flood_window_s: int = Field(2, ge=1, le=60)
    flood_block_s: int = Field(10, ge=1, le=3600)
    """How long a flooding source stays blocked after it went quiet."""
    max_message_bytes: int = Field(16384, ge=1024, le=65535)
    """A larger request is refused at the front door (513 Message Too Large)."""
    restart_min_s: float = Field(0.5, gt=0, le=60)
    """Wait before restarting a worker that exited; doubles while it keeps dying, up to `restart_max_s`."""
    restart_max_s: float = Field(30.0, gt=0, le=3600)
    when_full: WhenFullConfig = WhenFullConfig()
    remote: list[str] = []
    """Gateways on other machines the front door also sends calls to (`sip:HOST:PORT`; each a `voicegate serve`
    with `workers: {when_full: {reply: 486}}`, reaching the front door at `sip.listen`)."""
    kamailio: str = "/usr/sbin/kamailio"

    @field_validator("remote")
    @classmethod
    def _uris(cls, v: list[str]) -> list[str]:
        for uri in v:
            parse_sip_uri(uri)
        return v

    @model_validator(mode="before")
    @classmethod
    def _count_only(cls, v: object) -> object:
        return {"count": v} if isinstance(v, int) else v


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
    spend: dict[str, SpendCap] = {}
    """Spend caps by agent name (agents.spend), priced with `prices`."""
    metrics: MetricsConfig = MetricsConfig()
    trunks: dict[str, TrunkConfig] = {}
    trunk_status_path: str = "run/trunks.json"
    """Where `voicegate serve` keeps each trunk's registration state for `voicegate trunks`; relative to the
    config file's folder."""
    transports: TransportsConfig = TransportsConfig()
    workers: WorkersConfig = WorkersConfig()
    """`workers: N` or a mapping; more than one puts Kamailio in front (voicegate serve --workers N overrides)."""
    control: ControlConfig | None = None
    """The control endpoint; none: no calls are originated."""
    tools: dict[str, ToolConfig] = {}
    """Business tools by name (agents.tools), offered to the agents that list them."""

    @model_validator(mode="after")
    def _routes(self) -> Config:
        for i, r in enumerate(self.routes):
            if r.agent not in self.agents:
                raise ValueError(f"routes[{i}] names unknown agent {r.agent!r}")
        return self

    @model_validator(mode="after")
    def _pcap(self) -> Config:
        """A pcap takes its SIP from the SIP trace: reported at each route's `pcap` line."""
        faults = [i for i, r in enumerate(self.routes) if r.pcap and not self.records.sip_trace]
        if faults:
            raise ValidationError.from_exception_data("Config", [
                InitErrorDetails(type=PydanticCustomError("pcap", "{msg}", {
                    "msg": "needs records.sip_trace: true (the pcap's SIP messages come from the SIP trace)"}),
                    loc=("routes", i, "pcap"), input=True) for i in faults])
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

    @field_validator("trunks")
    @classmethod
    def _trunks_fit(cls, v: dict[str, TrunkConfig], info: ValidationInfo) -> dict[str, TrunkConfig]:
        """Trunk routes name known agents, trunk transports are ones SIP listens on. Raised as a ValidationError
        whose locations pydantic prefixes with `trunks`, so each fault gets the line of its own key."""
        sip, agents = info.data.get("sip"), info.data.get("agents")
        faults: list[tuple[tuple[str | int, ...], str]] = []
        for name, t in v.items():
            if agents is not None:
                faults += [((name, "routes", i, "agent"), f"unknown agent {r.agent!r}")
                           for i, r in enumerate(t.routes) if r.agent not in agents]
            if sip is not None and t.transport not in sip.transports:
                faults.append(((name, "transport"), f"{t.transport} is not in sip.transports "
                                                    f"({', '.join(sip.transports)})"))
        if faults:
            raise ValidationError.from_exception_data("Config", [
                InitErrorDetails(type=PydanticCustomError("trunk", "{msg}", {"msg": msg}), loc=loc, input=v)
                for loc, msg in faults])
        return v

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

    @field_validator("workers")
    @classmethod
    def _workers_fit(cls, v: WorkersConfig, info: ValidationInfo) -> WorkersConfig:
        """What several workers cannot do yet, and ports and RTP ranges they would not fit in."""
        from telephony.workers import fit_problem

        sip, rtp, trunks = info.data.get("sip"), info.data.get("rtp"), info.data.get("trunks")
        if sip is not None and rtp is not None and (problem := fit_problem(v, v.count, sip, rtp, trunks or {})):
            raise ValueError(problem)
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

    @model_validator(mode="after")
    def _fallbacks(self) -> Config:
        """A speech-to-speech agent's `fallback` names a cascaded agent: reported at its `fallback` line."""
        faults = [(name, a.fallback) for name, a in self.agents.items() if isinstance(a, OpenAIRealtimeConfig
                  | GeminiLiveConfig) and a.fallback is not None and not isinstance(self.agents.get(a.fallback),
                                                                                    CascadedAgentConfig)]
        if faults:
            raise ValidationError.from_exception_data("Config", [
                InitErrorDetails(type=PydanticCustomError("fallback", "{msg}", {
                    "msg": f"{to!r} is not a configured cascaded agent"}),
                    loc=("agents", name, "fallback"), input=to) for name, to in faults])
        return self

    @model_validator(mode="after")
    def _tools(self) -> Config:
        check_tools(self.agents, self.tools)
        return self

    def route(self, user: str, trunk: str = "", headers: Mapping[str, str] | None = None) -> str | None:
        """The agent name for a called user part and the INVITE's headers (the trunk's own routes first), or None
        when no route matches."""
        if trunk in self.trunks and (agent := self.trunks[trunk].route(user, headers)) is not None:
            return agent
        for r in self.routes:
            if r.matches(user, headers):
                return r.agent
        return None

    def dtmf_mode(self, user: str, trunk: str = "", headers: Mapping[str, str] | None = None) -> DtmfMode:
        """How the agent's keys go out on a call: its route's `dtmf_mode` (the trunk's own routes first), else the
        trunk's, else rfc4733."""
        t = self.trunks.get(trunk)
        routes = [*(t.routes if t is not None else []), *self.routes]
        route = next((r for r in routes if r.matches(user, headers)), None)
        if route is not None and route.dtmf_mode is not None:
            return route.dtmf_mode
        return t.dtmf_mode if t is not None else "rfc4733"

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


def issue_at(file: str | Path, loc: tuple[str | int, ...], message: str) -> ConfigIssue:
    """A fault found after validation (an engine that does not load) at config path `loc` of `file`: its line."""
    lines: dict[tuple[Any, ...], int] = {}
    with contextlib.suppress(OSError, yaml.YAMLError):
        node = yaml.compose(Path(file).read_text(), Loader=yaml.SafeLoader)
        if node is not None:
            _line_index(node, (), lines)
    return ConfigIssue(str(file), _nearest_line(lines, loc), ".".join(str(p) for p in loc), message)


def parse_config(text: str, file: str = "<config>") -> Config:
    return validate_yaml(text, file, Config)


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise ConfigError([ConfigIssue(str(path), 0, "(file)", e.strerror or str(e))]) from None


def load_config(path: str | Path) -> Config:
    cfg = parse_config(read_text(path), str(path))
    status = Path(path).parent.absolute() / Path(cfg.trunk_status_path).expanduser()
    return cfg.model_copy(update={"records": cfg.records.under(Path(path).parent), "trunk_status_path": str(status)})
