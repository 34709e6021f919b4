"""What each worker process is given, and when a dead one is restarted (pure: no processes here).

A pjsua2 process serves at most 4 calls (DESIGN §2), so `voicegate serve --workers N` runs N gateways. Behind the
Kamailio front door (more than one, or `workers.remote` gateways on other machines), each listens on loopback
(`workers.first_port` + i, UDP) and owns one N-th of the configured RTP range; the stream transports and the
control endpoint (fixed ports) run in worker 0, which asks the others for the pcap of a call it does not hold
(`control_peers`); every worker keeps metrics, which the supervisor serves summed (telephony/cluster_metrics.py).
With `when_full: {reply: announcement}` one more worker (index N) answers the calls no worker has room for, says
the text and hangs up. With `sip.public_address` each worker writes it into its SDP
(`rtp.public_address`) and names the front door in its Contact.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from agents.config import ScriptedAgentConfig
from telephony.config import RouteConfig
from telephony.frontdoor_tls import problem as trunk_tls_problem

if TYPE_CHECKING:
    from telephony.config import Config, RtpConfig, SipConfig, TrunkConfig, WorkersConfig

PORTS_PER_CALL = 2
"""RTP and RTCP."""
CALLS_PER_WORKER = 4
WORKER_PARAM = "vgw"
"""The Contact URI parameter with which a local worker behind `sip.public_address` names its port (the front
door's address is its Contact's host)."""


def behind_front_door(workers: WorkersConfig, count: int) -> bool:
    """Kamailio runs in front: several workers, gateways elsewhere, or an announcement for full ones."""
    return count > 1 or bool(workers.remote) or announcing(workers)


def announcing(workers: WorkersConfig) -> bool:
    return workers.when_full.reply == "announcement"


def processes(workers: WorkersConfig, count: int) -> int:
    """Worker processes to run: `count`, and one more that plays the announcement when all are full."""
    return count + announcing(workers)


def fit_problem(workers: WorkersConfig, count: int, sip: SipConfig, rtp: RtpConfig,
                trunks: Mapping[str, TrunkConfig]) -> str:
    """Why `count` workers cannot run with this config ("" when they can)."""
    if not behind_front_door(workers, count):
        return ""
    count = processes(workers, count)
    registering = [n for n, t in trunks.items() if t.registers]
    if registering and sip.listen == "0.0.0.0" and not sip.public_address:
        return (f"trunk {registering[0]} registers through the front door, whose address the carrier must call: "
                "set sip.listen or sip.public_address")
    span = range(workers.first_port, workers.first_port + count)
    if span.stop - 1 > 65535:
        return f"{count} workers from first_port {workers.first_port} run past port 65535"
    if sip.port in span and sip.listen in ("0.0.0.0", "127.0.0.1"):
        return f"worker ports {span.start}-{span.stop - 1} include sip.port {sip.port} (the front door's)"
    if problem := trunk_tls_problem(trunks):
        return problem
    size = (rtp.port_max - rtp.port_min + 1) // count
    if size < CALLS_PER_WORKER * PORTS_PER_CALL:
        return (f"rtp range {rtp.port_min}-{rtp.port_max} gives each of {count} workers {size} ports; each needs "
                f"{CALLS_PER_WORKER * PORTS_PER_CALL}")
    return ""


def rtp_slice(rtp: RtpConfig, index: int, count: int) -> tuple[int, int]:
    """Worker `index`'s part of the RTP range: equal, disjoint, in order."""
    size = (rtp.port_max - rtp.port_min + 1) // count
    lo = rtp.port_min + index * size
    return lo, lo + size - 1


def worker_port(cfg: Config, index: int, count: int) -> int:
    return cfg.workers.first_port + index if behind_front_door(cfg.workers, count) else cfg.sip.port


def front_door_host(sip: SipConfig) -> str:
    """Where the workers reach the front door."""
    return "127.0.0.1" if sip.listen == "0.0.0.0" else sip.listen


def _trunk_behind_front_door(cfg: Config, t: TrunkConfig, index: int) -> TrunkConfig:
    """Worker 0 registers a registering trunk once for all (through the front door, `sip.outbound_proxy`, then
    the trunk's own proxy) with the front door's address as Contact, so that the carrier's calls reach the front
    door and any worker; it alone sends the trunk's OPTIONS keepalives. The others only take the trunk's calls.
    The front door, which holds the TLS connections, presents a trunk's own certificate (telephony/frontdoor_tls.py)."""
    t = t.model_copy(update={"tls": None})
    if index > 0:
        return t.model_copy(update={"registers": False, "keepalive_s": None})
    if not t.registers:
        return t
    params = "" if t.transport == "udp" else f";transport={t.transport}"
    host = cfg.sip.public_address or cfg.sip.listen
    port = cfg.sip.tls.port if t.transport == "tls" and cfg.sip.tls is not None else cfg.sip.port
    return t.model_copy(update={"contact": t.contact or f"sip:{t.username}@{host}:{port}{params}"})


def worker_config(cfg: Config, index: int, count: int) -> Config:
    """The config worker `index` of `count` runs with. One worker alone is the gateway as configured; behind the
    front door every worker refuses a call it has no slot for with 486, so that the front door tries the next one."""
    if not behind_front_door(cfg.workers, count):
        return cfg
    lo, hi = rtp_slice(cfg.rtp, index, processes(cfg.workers, count))
    public = cfg.sip.public_address
    sip = cfg.sip.model_copy(update={"listen": "127.0.0.1", "port": worker_port(cfg, index, count),
                                     "transports": ["udp"], "public_address": None, "tls": None,
                                     "front_door": [front_door_host(cfg.sip)],
                                     "outbound_proxy": f"sip:{front_door_host(cfg.sip)}:{cfg.sip.port}",
                                     "contact": (f"sip:voicegate@{public}:{cfg.sip.port};"
                                                 f"{WORKER_PARAM}={worker_port(cfg, index, count)}")
                                     if public else None})
    rtp = cfg.rtp.model_copy(update={"port_min": lo, "port_max": hi,
                                     "public_address": cfg.rtp.public_address or public})
    workers = cfg.workers.model_copy(update={
        "count": count, "when_full": cfg.workers.when_full.model_copy(update={"reply": 486})})
    update: dict[str, object] = {"sip": sip, "rtp": rtp,
                                 "workers": workers,
                                 "trunks": {n: _trunk_behind_front_door(cfg, t, index) for n, t in cfg.trunks.items()}}
    if index > 0:
        update["transports"] = cfg.transports.model_copy(update={"media_stream": None, "audiosocket": None,
                                                                 "webrtc": None})
        # one control endpoint for dialling, in worker 0; the others serve worker 0 the pcap of their calls
        update["control"] = None if cfg.control is None or index == count else cfg.control.model_copy(
            update={"listen": "127.0.0.1", "port": worker_port(cfg, index, count)})
        status = Path(cfg.trunk_status_path)
        update["trunk_status_path"] = str(status.with_name(f"worker{index}-{status.name}"))  # `voicegate trunks`: 0's
    if index == count:  # the announcer: one scripted agent for every number
        full = cfg.workers.when_full
        busy = ScriptedAgentConfig.model_validate({"type": "scripted", "start": "busy", "voice": full.voice, "nodes": {
            "busy": [{"say": full.text, "interruptible": False}, {"hangup": "all_lines_busy"}]}})
        update.update(agents={"busy": busy}, routes=[RouteConfig(match="*", agent="busy")], spend={}, trunks={})
    return cfg.model_copy(update=update)


def control_peers(cfg: Config, index: int) -> list[tuple[int, int]]:
    """The workers whose calls worker `index` asks for a pcap it cannot find among its own: (index, port) of each
    other local worker's control endpoint, for worker 0 of several with a control endpoint; else none. Worker i > 0
    listens on TCP 127.0.0.1 at its SIP port's number (its SIP is UDP alone), serving `/calls/<Call-ID>/pcap` only."""
    count = cfg.workers.count
    if index != 0 or cfg.control is None or not behind_front_door(cfg.workers, count):
        return []
    return [(i, worker_port(cfg, i, count)) for i in range(1, count)]


class Restarts:
    """Backoff for one supervised process: `min_s` after a run that lasted `healthy_s`, else double the last wait,
    up to `max_s`."""

    def __init__(self, min_s: float, max_s: float, healthy_s: float = 30.0) -> None:
        self.min_s, self.max_s, self.healthy_s = min_s, max_s, healthy_s
        self._next = min_s

    def exited(self, started: float, now: float) -> float:
        """The process that started at `started` ended at `now`: how long to wait before starting it again."""
        if now - started >= self.healthy_s:
            self._next = self.min_s
        wait = self._next
        self._next = min(self._next * 2, self.max_s)
        return wait
