"""Call cost: the usage meter agents feed during a call, and the price table that turns usage into money.

Pure: no clock, no I/O. Agents report quantities through `CallControl.meter(kind, amount)`:

- `asr_s`: caller audio sent to speech recognition (seconds);
- `tts_chars`: characters spoken by text-to-speech;
- `llm_in_tokens`, `llm_out_tokens`: tokens an LLM endpoint reported in its `usage`; when it reports none, the agent
  reports `llm_in_chars` and `llm_out_chars` instead, priced at `CHARS_PER_TOKEN` characters a token (an estimate);
- `<backend>_in_s`, `<backend>_out_s`: audio seconds sent to and received from a speech-to-speech backend
  (`openai_realtime`, `gemini_live`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

CHARS_PER_TOKEN = 4.0
"""Characters per LLM token when the endpoint reports no usage (about right for English text and JSON)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioPrice(_Strict):
    in_per_min: float = Field(0.0, ge=0)
    """Per minute of caller audio sent to the backend."""
    out_per_min: float = Field(0.0, ge=0)
    """Per minute of audio the backend sent back."""


class S2sPrices(_Strict):
    """Per audio minute, by speech-to-speech backend type."""

    openai_realtime: AudioPrice = AudioPrice()
    gemini_live: AudioPrice = AudioPrice()


class LlmPrice(_Strict):
    in_per_1k_tokens: float = Field(0.0, ge=0)
    out_per_1k_tokens: float = Field(0.0, ge=0)


class Prices(_Strict):
    """The `prices:` section; every price defaults to 0."""

    currency: str = "USD"
    s2s: S2sPrices = S2sPrices()
    llm: LlmPrice = LlmPrice()
    tts_per_char: float = Field(0.0, ge=0)
    asr_per_min: float = Field(0.0, ge=0)
    sip_per_min: float = Field(0.0, ge=0)
    """Per minute of call (trunk or carrier): the record's `duration_s`, from the INVITE to the hang-up."""


S2S_BACKENDS = tuple(S2sPrices.model_fields)
KINDS = frozenset({
    "asr_s", "tts_chars", "llm_in_tokens", "llm_out_tokens", "llm_in_chars", "llm_out_chars",
    *(f"{b}_{way}_s" for b in S2S_BACKENDS for way in ("in", "out")),
})


@dataclass
class Meter:
    """One call's usage, summed per kind."""

    usage: dict[str, float] = field(default_factory=dict)

    def add(self, kind: str, amount: float) -> None:
        if kind not in KINDS:
            raise ValueError(f"agent reported unknown usage kind {kind!r}; known: {', '.join(sorted(KINDS))}")
        if not math.isfinite(amount) or amount < 0:
            raise ValueError(f"agent reported {amount!r} of {kind}: amounts are finite and not negative")
        self.usage[kind] = self.usage.get(kind, 0.0) + amount


@dataclass(frozen=True)
class Cost:
    by_backend: dict[str, float]
    """`sip`, `asr`, `llm`, `tts` and each speech-to-speech backend that was used."""
    total: float
    currency: str


def s2s_per_min(prices: Prices, backend: str) -> float:
    """Most a minute of call costs on a speech-to-speech backend: audio in plus audio out, each all minute long."""
    p: AudioPrice = getattr(prices.s2s, backend)
    return p.in_per_min + p.out_per_min


def llm_tokens(usage: Mapping[str, float]) -> tuple[float, float]:
    """Input and output tokens: those reported, plus those estimated from characters."""
    return (usage.get("llm_in_tokens", 0.0) + usage.get("llm_in_chars", 0.0) / CHARS_PER_TOKEN,
            usage.get("llm_out_tokens", 0.0) + usage.get("llm_out_chars", 0.0) / CHARS_PER_TOKEN)


def price(usage: Mapping[str, float], call_s: float, prices: Prices) -> Cost:
    """What a call of `call_s` seconds with this usage cost; a backend appears when it was used, even at price 0."""
    by: dict[str, float] = {}
    if call_s > 0:
        by["sip"] = call_s / 60 * prices.sip_per_min
    if "asr_s" in usage:
        by["asr"] = usage["asr_s"] / 60 * prices.asr_per_min
    tokens_in, tokens_out = llm_tokens(usage)
    if tokens_in or tokens_out:
        by["llm"] = tokens_in / 1000 * prices.llm.in_per_1k_tokens + tokens_out / 1000 * prices.llm.out_per_1k_tokens
    if "tts_chars" in usage:
        by["tts"] = usage["tts_chars"] * prices.tts_per_char
    for backend in S2S_BACKENDS:
        sent, received = usage.get(f"{backend}_in_s"), usage.get(f"{backend}_out_s")
        if sent is not None or received is not None:
            p: AudioPrice = getattr(prices.s2s, backend)
            by[backend] = (sent or 0.0) / 60 * p.in_per_min + (received or 0.0) / 60 * p.out_per_min
    return Cost({k: round(v, 6) for k, v in by.items()}, round(sum(by.values()), 6), prices.currency)
