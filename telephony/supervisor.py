"""`voicegate serve --workers N`: N worker processes, each the gateway on its own port and RTP range, restarted
with backoff when one exits, and for N > 1 (or with `workers.remote`) the Kamailio front door
(telephony/frontdoor.py), started once every local worker answers OPTIONS and restarted too if it dies.
SIGTERM to the supervisor drains every worker, then stops Kamailio (it carries the workers' in-dialog requests
until then). SIGTERM to one worker drains that worker alone: it answers OPTIONS with 503, Kamailio stops sending
it calls, its calls finish, and it is started again. Workers write their own JSON log lines to the supervisor's
stderr, each tagged with `worker`. A worker that died (kill -9, a crash) leaves its calls' rows in progress in the
call records: the supervisor ends them (`worker_died`, the duration up to its death), and has the front door send
its callers a BYE (telephony/frontdoor_rpc.py), so that they hear the call end rather than silence. Behind the
front door the supervisor serves `/metrics` and `/healthz` for every worker (telephony/cluster_metrics.py).
SIGHUP to the supervisor checks the config file and reloads it live in every worker, running calls kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

from telephony.cluster_metrics import MULTIPROC_ENV, ClusterMetrics
from telephony.config import Config, ConfigError, load_config
from telephony.digest import NONCE_KEY_ENV
from telephony.errors import VoicegateError
from telephony.frontdoor import RPC_SOCKET, FrontDoor, worker_uri
from telephony.frontdoor_rpc import RpcError, end_worker_calls
from telephony.logs import event
from telephony.metrics import OpsServer
from telephony.records import close_open
from telephony.workers import Restarts, behind_front_door, fit_problem, processes, worker_port

READY_TIMEOUT_S = 120.0
"""How long the front door waits for the workers' first OPTIONS answers (agents load models at start-up)."""


def options_ping(host: str, port: int, timeout: float = 0.5) -> int:
    """Send one SIP OPTIONS over UDP; the status code of the answer, 0 for none."""
    tag = uuid.uuid4().hex[:12]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        lport = s.getsockname()[1]
        msg = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{tag}\r\n"
               f"From: <sip:supervisor@127.0.0.1>;tag={tag}\r\nTo: <sip:{host}:{port}>\r\nCall-ID: {tag}\r\n"
               f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        try:
            s.sendto(msg.encode(), (host, port))
            while True:
                data = s.recv(65535)
                if data.startswith(b"SIP/2.0 ") and data[8:9] != b"1":
                    return int(data[8:11])
        except (OSError, ValueError):
            return 0


async def wait_answering(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(options_ping, host, port) == 200:
            return True
        await asyncio.sleep(0.2)
    return False


_REFUSED = 2
"""`voicegate serve`'s exit code when it will not start with the config file (an error, or an engine that does not
load). A worker's first start that ends so stops the supervisor with it; a later restart only retries (the file may
have been edited meanwhile, and the other workers still serve)."""


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies, so that no worker (or Kamailio) outlives it (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    def __init__(self, cfg: Config, config_path: str, count: int) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.count = count
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.front = FrontDoor(cfg, count) if behind_front_door(cfg.workers, count) else None
        self._stop = asyncio.Event()
        self._rc = 0
        self._env = {**os.environ, NONCE_KEY_ENV: os.urandom(32).hex()}
        """The workers' environment: one nonce key for all, so a digest challenge may be answered to any."""
        self._reload: asyncio.Task[None] | None = None
        self.metrics: ClusterMetrics | None = None
        if self.front is not None and cfg.metrics.enabled:
            folder = Path(tempfile.mkdtemp(prefix="voicegate-metrics-"))
            self._env[MULTIPROC_ENV] = str(folder)
            self.metrics = ClusterMetrics(folder, processes(cfg.workers, count), self._front_door_up)

    def _front_door_up(self) -> bool:
        proc = self.front.proc if self.front is not None else None
        return proc is not None and proc.returncode is None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        if self.front is not None:
            try:
                self.front.write()
            except (RuntimeError, OSError) as e:
                print(f"voicegate: {e}", file=sys.stderr)
                self.front.remove()
                self._remove_metrics()
                return 3
        ops = None
        if self.metrics is not None:
            m = self.cfg.metrics
            try:
                ops = OpsServer(self.metrics, m.listen, m.port, m.token)
            except VoicegateError as e:
                print(f"voicegate: {e}", file=sys.stderr)
                self._remove_metrics()
                if self.front is not None:
                    self.front.remove()
                return 3
        ports = [worker_port(self.cfg, i, self.count) for i in range(processes(self.cfg.workers, self.count))]
        event("supervisor_started", workers=self.count, worker_ports=ports, front_door=self.front is not None,
              announcer=len(ports) > self.count)
        tasks = [asyncio.ensure_future(self._keep_worker(i)) for i in range(len(ports))]
        if self.front is not None:
            tasks.append(asyncio.ensure_future(self._keep_front_door(self.front, ports)))
        await self._stop.wait()
        await self._shutdown()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if ops is not None:
            ops.close()
        self._remove_metrics()
        event("supervisor_stopped")
        return self._rc

    def _on_sighup(self) -> None:
        if self._reload is not None and not self._reload.done():
            event("config_reload_refused", file=self.config_path, errors=["a reload is still running"])
        elif not self._stop.is_set():
            self._reload = asyncio.ensure_future(self._reload_workers())

    async def _reload_workers(self) -> None:
        """Check the file (its errors are refused here, once, with file:line), then SIGHUP every running worker:
        each reloads its part of the file live and keeps its calls (telephony/reload.py); the front door gets the
        new trunks' addresses for its source ACL."""
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as e:
            event("config_reload_refused", file=self.config_path, errors=[str(i) for i in e.issues])
            return
        if problem := fit_problem(new.workers, self.count, new.sip, new.rtp, new.trunks):
            event("config_reload_refused", file=self.config_path, errors=[problem])
            return
        acl = False
        if self.front is not None:
            try:
                acl = await asyncio.to_thread(self.front.reload_acl, new)
            except (RuntimeError, OSError) as e:
                event("config_reload_refused", file=self.config_path, errors=[str(e)])
                return
        live = sorted(i for i, p in self.procs.items() if p.returncode is None)
        for i in live:
            self.procs[i].send_signal(signal.SIGHUP)
        event("config_reload_forwarded", file=self.config_path, workers=live, front_door_acl_reloaded=acl)

    def _remove_metrics(self) -> None:
        if self.metrics is not None:
            shutil.rmtree(self.metrics.folder, ignore_errors=True)

    async def _shutdown(self) -> None:
        event("supervisor_stopping", workers=len(self.procs))
        live = [p for p in self.procs.values() if p.returncode is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.cfg.timeouts.shutdown_grace_s + 15):
                await asyncio.gather(*(p.wait() for p in live))
        except TimeoutError:
            for p in live:
                if p.returncode is None:
                    event("worker_killed", pid=p.pid, why="did not stop after SIGTERM")
                    p.kill()
            await asyncio.gather(*(p.wait() for p in live))
        if self.front is not None:
            await self.front.stop()
            self.front.remove()

    async def _pause(self, seconds: float) -> None:
        """Sleep, or return at once when stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _keep_worker(self, index: int) -> None:
        restarts = Restarts(self.cfg.workers.restart_min_s, self.cfg.workers.restart_max_s)
        argv = [sys.executable, "-m", "telephony.cli", "serve", "--config", self.config_path,
                "--workers", str(self.count), "--worker-index", str(index)]
        first = True
        while not self._stop.is_set():
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.DEVNULL, env=self._env,
                                                        preexec_fn=_die_with_parent)
            self.procs[index] = proc
            event("worker_started", worker=index, pid=proc.pid, port=worker_port(self.cfg, index, self.count))
            rc = await proc.wait()
            await asyncio.gather(self._end_calls(index, proc.pid), self._close_records(index, proc.pid, time.time()))
            if self.metrics is not None:
                self.metrics.worker_exited(proc.pid)
            if self._stop.is_set():
                return
            if first and rc == _REFUSED:  # the file as given does not start (its stderr says where): no retries
                event("worker_refused_config", worker=index, pid=proc.pid, file=self.config_path)
                self._rc = _REFUSED
                self._stop.set()
                return
            first = False
            delay = restarts.exited(started, time.monotonic())
            event("worker_exited", worker=index, pid=proc.pid, rc=rc, restart_in_s=delay)
            await self._pause(delay)

    async def _end_calls(self, index: int, pid: int) -> None:
        """Have the front door end the answered calls of a local worker that exited (none after a clean exit)."""
        if self.front is None or self.front.proc is None or self.front.proc.returncode is not None:
            return
        uri = worker_uri(self.cfg, index, self.count)
        try:
            calls = await asyncio.to_thread(end_worker_calls, self.front.dir / RPC_SOCKET, uri)
        except RpcError as e:
            event("frontdoor_error", msg=f"ending the calls of worker {index} ({uri}): {e}", skipped=0)
            return
        if calls:
            event("worker_calls_ended", worker=index, pid=pid, calls=calls, by="frontdoor_bye")

    async def _close_records(self, index: int, pid: int, died: float) -> None:
        """End the call records a worker left in progress (none after a clean exit)."""
        if not self.cfg.records.enabled:
            return
        path = Path(self.cfg.records.path)
        try:
            calls = await asyncio.to_thread(close_open, path, pid, died, "worker_died")
        except (OSError, sqlite3.Error, ValueError) as e:
            event("records_error", worker=index, pid=pid, path=str(path), error=f"{type(e).__name__}: {e}")
            return
        if calls:
            event("worker_calls_closed", worker=index, pid=pid, calls=calls, reason="worker_died")

    async def _keep_front_door(self, front: FrontDoor, ports: list[int]) -> None:
        ready = await asyncio.gather(*(wait_answering("127.0.0.1", p, READY_TIMEOUT_S) for p in ports))
        if not all(ready):
            event("frontdoor_waited", not_answering=[p for p, ok in zip(ports, ready, strict=True) if not ok])
        if self.cfg.workers.remote:
            event("frontdoor_remote_workers", remote=self.cfg.workers.remote)
        restarts = Restarts(self.cfg.workers.restart_min_s, self.cfg.workers.restart_max_s)
        host = "127.0.0.1" if self.cfg.sip.listen == "0.0.0.0" else self.cfg.sip.listen
        while not self._stop.is_set():
            started = time.monotonic()
            pid = await front.start(_die_with_parent)
            event("frontdoor_started", pid=pid, port=self.cfg.sip.port)
            waiter = asyncio.ensure_future(front.wait())
            if await wait_answering(host, self.cfg.sip.port, 10.0):
                event("frontdoor_ready", port=self.cfg.sip.port, workers=ports)
            rc = await waiter
            if self._stop.is_set():
                return
            delay = restarts.exited(started, time.monotonic())
            event("frontdoor_exited", pid=pid, rc=rc, restart_in_s=delay)
            await front.stop()
            await self._pause(delay)
