"""Helpers for the cascaded agent's call tests (test_cascaded*.py): a gateway with extra agents, call URIs, the
turns of the call records, and caller tracks built from clips."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import yaml

from tests import audio
from tests.integration.peers import Gateway, free_port, gateway_config, start_gateway
from tests.prompts import SOUNDS


def start_cascaded_gateway(tmp_path_factory: pytest.TempPathFactory, name: str, agents: dict[str, Any],
                           routes: list[dict[str, str]], tool_urls: dict[str, str] | None = None) -> Gateway:
    """The test gateway config plus `agents`, with `routes` before its own and each tool's `http.url` replaced."""
    port = free_port()
    cfg = yaml.safe_load(gateway_config(port))
    for tool, url in (tool_urls or {}).items():
        cfg["tools"][tool]["http"]["url"] = url
    cfg["agents"].update(agents)
    cfg["routes"] = [*routes, *cfg["routes"]]
    return start_gateway(yaml.safe_dump(cfg), tmp_path_factory.mktemp(name), port)


def uri(gw: Gateway, user: str) -> str:
    return f"sip:{user}@127.0.0.1:{gw.port}"


def turns_of(gw: Gateway, called: str, last: bool = False) -> list[dict[str, Any]]:
    """The turns of every call to `called` (or of the last one), from the gateway's call records."""
    calls = [e["call"] for e in gw.events("call_incoming") if e["called"] == called]
    ends = [gw.wait_event("call_end", 15, call=c) for c in (calls[-1:] if last else calls)]
    return [t for e in ends for t in e["turns"]]


def clip(name: str) -> np.ndarray:
    """One of Asterisk's recorded prompts."""
    return audio.read_wav(SOUNDS / f"{name}.wav")


def sequence(clips: list[tuple[float, np.ndarray]], length_s: float) -> np.ndarray:
    """A caller track of `length_s` with each clip placed at its start time (s)."""
    out = np.zeros(int(length_s * 16000), np.float32)
    for at, x in clips:
        i = int(at * 16000)
        out[i : i + len(x)] += x[: len(out) - i]
    return out

