"""What each worker process is given, and when a dead one is restarted (pure: no processes here).

A pjsua2 process serves at most 4 calls (DESIGN §2), so `voicegate serve --workers N` runs N gateways. Behind the
Kamailio front door (more than one, or `workers.remote` gateways on other machines), each listens on loopback
(`workers.first_port` + i, UDP) and owns one N-th of the configured RTP range; the stream transports and the
metrics and control endpoints (fixed ports) run in worker 0, which asks the others for the pcap of a call it does
not hold (`control_peers`). With `when_full: {reply: announcement}` one more
worker (index N) answers the calls no worker has room for, says the text and hangs up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from agents.config import ScriptedAgentConfig
from telephony.config import RouteConfig

if TYPE_CHECKING:
    from telephony.config import Config, RtpConfig, SipConfig, TrunkConfig, WorkersConfig

PORTS_PER_CALL = 2
"""RTP and RTCP."""
CALLS_PER_WORKER = 4


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
    if "tls" in sip.transports:
        return "several workers with SIP over TLS are not there yet (the Kamailio front door would end TLS)"
    if sip.public_address:
        return ("several workers with sip.public_address are not there yet (each worker's SDP would need it, its "
                "Contact must not)")
    if sip.allow:
        return ("several workers with sip.allow are not there yet (workers see the front door's address, not the "
                "caller's; sip.users works)")
    if any(t.registers for t in trunks.values()):
        return "several workers with a registering trunk are not there yet (the registration belongs at the front door)"
    span = range(workers.first_port, workers.first_port + count)
    if span.stop - 1 > 65535:
        return f"{count} workers from first_port {workers.first_port} run past port 65535"
    if sip.port in span and sip.listen in ("0.0.0.0", "127.0.0.1"):
        return f"worker ports {span.start}-{span.stop - 1} include sip.port {sip.port} (the front door's)"
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


def worker_config(cfg: Config, index: int, count: int) -> Config:
    """The config worker `index` of `count` runs with. One worker alone is the gateway as configured; behind the
    front door every worker refuses a call it has no slot for with 486, so that the front door tries the next one."""
    if not behind_front_door(cfg.workers, count):
        return cfg
    lo, hi = rtp_slice(cfg.rtp, index, processes(cfg.workers, count))
    sip = cfg.sip.model_copy(update={"listen": "127.0.0.1", "port": worker_port(cfg, index, count),
                                     "transports": ["udp"], "public_address": None, "tls": None})
    workers = cfg.workers.model_copy(update={
        "count": count, "when_full": cfg.workers.when_full.model_copy(update={"reply": 486})})
    update: dict[str, object] = {"sip": sip, "rtp": cfg.rtp.model_copy(update={"port_min": lo, "port_max": hi}),
                                 "workers": workers}
    if index > 0:
        update["transports"] = cfg.transports.model_copy(update={"media_stream": None, "audiosocket": None,
                                                                 "webrtc": None})
        update["metrics"] = cfg.metrics.model_copy(update={"enabled": False})
        # one control endpoint for dialling, in worker 0; the others serve worker 0 the pcap of their calls
        update["control"] = None if cfg.control is None or index == count else cfg.control.model_copy(
            update={"listen": "127.0.0.1", "port": worker_port(cfg, index, count)})
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
