"""The supervisor's `/metrics` and `/healthz` for its workers (telephony/cluster_metrics.py): two real processes
write their metrics in prometheus_client's multiprocess mode, the sum counts both, a dead one's calls stay counted
and its gauges go."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from telephony.cluster_metrics import MULTIPROC_ENV, ClusterMetrics

WORKER = """
import sys
from telephony.metrics import GatewayMetrics
m = GatewayMetrics(lambda called: "*")
m("gateway_ready", {})
for n in range(int(sys.argv[1])):
    m("call_incoming", {"call": f"c{n}", "called": "1"})
    m("call_answered", {"call": f"c{n}", "agent": "echo"})
    if n % 2 == 0:
        m("call_end", {"call": f"c{n}", "agent": "echo", "reason": "remote_200"})
m("trunk_state", {"trunk": "t", "state": "registered", "code": 200, "failures": 0})
m("trunk_state", {"trunk": "gone", "state": "registered", "code": 200, "failures": 0})
m("trunk_removed", {"trunk": "gone"})
"""


def sample(m: ClusterMetrics, name: str) -> float:
    return sum(s.value for f in m.registry.collect() for s in f.samples if s.name == name)


def test_the_sum_counts_every_worker_and_forgets_a_dead_ones_gauges(tmp_path: Path):
    door = [True]
    m = ClusterMetrics(tmp_path, 3, lambda: door[0])
    pids = []
    for calls in (3, 2):
        env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
        p = subprocess.Popen([sys.executable, "-c", WORKER, str(calls)], env=env)
        assert p.wait(30) == 0
        pids.append(p.pid)
    assert sample(m, "voicegate_calls_total") == 3  # calls 0, 2 of the first, 0 of the second
    assert sample(m, "voicegate_calls_active") == 2 and sample(m, "voicegate_ready") == 2
    assert sample(m, "voicegate_trunk_registration") == 2  # "t" in each; a trunk a reload removed counts nowhere
    assert m.health() == (True, {"status": "degraded", "front_door": True, "workers_ready": 2, "workers": 3,
                                 "calls_active": 2})
    m.worker_exited(pids[0])
    assert sample(m, "voicegate_calls_total") == 3 and sample(m, "voicegate_calls_active") == 1
    door[0] = False
    assert m.health()[0] is False and m.health()[1]["status"] == "down"
    m.worker_exited(pids[1])
    door[0] = True
    assert m.health() == (False, {"status": "down", "front_door": True, "workers_ready": 0, "workers": 3,
                                  "calls_active": 0})
