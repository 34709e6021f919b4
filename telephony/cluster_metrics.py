"""`/metrics` and `/healthz` of `voicegate serve --workers N` behind the front door: one scrape target for every
worker, served by the supervisor.

prometheus_client's multiprocess mode does the aggregation: every worker writes its metrics to files in one folder
(`PROMETHEUS_MULTIPROC_DIR`, which the supervisor sets before it starts them), and at each scrape the supervisor's
`MultiProcessCollector` sums them. One target is what a Prometheus admin expects of one service: its address does
not change with the number of workers, it answers while a worker restarts, and counters do not drop when a worker
dies (a dead worker's files keep its counts); gauges (`livesum`) count live workers only, so `voicegate_ready` is
the number of workers taking calls. `/healthz` is 200 while the front door runs and at least one worker is ready.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ClusterMetrics:
    """The workers' metrics summed from `folder`, and the cluster's health: `processes` workers (the announcer
    included) behind a front door that runs while `front_door_up()`."""

    def __init__(self, folder: Path, processes: int, front_door_up: Callable[[], bool]) -> None:
        self.folder = folder
        self.processes = processes
        self.front_door_up = front_door_up
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=str(folder))  # type: ignore[no-untyped-call]

    def worker_exited(self, pid: int) -> None:
        """Drop the live gauges of a worker that exited (its counters and histograms stay in the sums)."""
        mark_process_dead(pid, str(self.folder))  # type: ignore[no-untyped-call]

    def _sum(self, name: str) -> float:
        return sum(s.value for m in self.registry.collect() for s in m.samples if s.name == name)

    def health(self) -> tuple[bool, dict[str, Any]]:
        ready = int(self._sum("voicegate_ready"))
        door = self.front_door_up()
        ok = door and ready > 0
        status = "down" if not ok else "ready" if ready == self.processes else "degraded"
        return ok, {"status": status, "front_door": door, "workers_ready": ready, "workers": self.processes,
                    "calls_active": int(self._sum("voicegate_calls_active"))}
