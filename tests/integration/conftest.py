from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.peers import ROOT, Gateway, free_port, rtp_range, start_gateway

LONG_PROMPT = (
    "This is a long message, so that you can try interrupting me. Voicegate listens while it speaks. "
    "When you start talking it stops at once, and when you only say something short it carries on where it "
    "paused. Most voice agents on the phone keep talking over their callers, or stop for their own echo."
)


def gateway_config(port: int, **overrides: object) -> str:
    """The shipped voicegate.yaml, on test ports, with a `long` agent and no default route."""
    cfg = yaml.safe_load((ROOT / "voicegate.yaml").read_text())
    lo, hi = rtp_range(40)
    cfg["sip"] = {"listen": "127.0.0.1", "port": port}
    cfg["rtp"] = {"port_min": lo, "port_max": hi}
    cfg["timeouts"] = {"silence_reprompt_s": 30, "silence_hangup_s": 60, "shutdown_grace_s": 2}
    cfg["agents"]["long"] = {
        "type": "scripted",
        "start": "talk",
        "nodes": {"talk": [{"say": LONG_PROMPT}, {"pause_s": 3}, {"hangup": "done"}]},
    }
    cfg["routes"] = [
        {"match": "echo", "agent": "echo"},
        {"match": "long", "agent": "long"},
        {"match": "/^demo$|^100$/", "agent": "demo"},
    ]
    for k, v in overrides.items():
        cfg[k] = v
    return yaml.safe_dump(cfg)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gw")
    port = free_port()
    gw = start_gateway(gateway_config(port), tmp, port)
    yield gw
    rc = gw.stop()
    tail = "\n".join(gw.lines[-20:])
    assert rc == 0, f"voicegate exited with {rc} on SIGTERM\n{tail}"
    gw.wait_event("gateway_stopped", 1)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
