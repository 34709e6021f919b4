"""The example scripts in tests/scripts/ call routes that the default voicegate.yaml serves with their agent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from telephony.config import load_config
from telephony.simulator.script import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "tests" / "scripts").glob("*.yaml"))
AGENT_OF = {"demo-": "demo", "assistant-": "assistant", "order-desk": "order_desk"}
"""The agent each example script is written for, by the start of its file name."""


def test_there_are_example_scripts():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_example_script_targets_the_route_of_its_agent(path: Path):
    cfg = load_config(ROOT / "voicegate.yaml")
    script = load_script(path)
    assert script.target, f"{path.name}: no target"
    m = re.match(r"^sips?:([^@;>]+)@", script.target)
    assert m, f"{path.name}: target {script.target} has no user part to route"
    user = m.group(1)
    route = cfg.route_for(user)
    assert route is not None, f"{path.name}: no route in voicegate.yaml matches {user!r}"
    wanted = next((agent for prefix, agent in AGENT_OF.items() if path.name.startswith(prefix)), None)
    assert wanted is not None, f"{path.name}: name the agent it is written for in AGENT_OF"
    assert wanted in cfg.agents, f"voicegate.yaml has no agent {wanted!r}"
    assert cfg.route(user) == wanted, (f"{path.name}: {script.target} reaches the {cfg.route(user)!r} agent, "
                                       f"the script is written for {wanted!r}")
