"""Prometheus metrics and health, fed by the events of the gateway and its backends (one `agents.eventlog` sink; no
other hook in the gateway).

`GatewayMetrics` turns events into prometheus_client counters, gauges and histograms in its own registry, and
follows the gateway's state (`gateway_ready`, `gateway_draining`, `gateway_stopped`) for `/healthz`. `OpsServer`
serves `/metrics` and `/healthz` over HTTP on a thread (prometheus_client's WSGI app behind a small router:
its own server answers every path with the metrics, and has no health check).
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from telephony.errors import VoicegateError

BACKEND_ERRORS = frozenset({
    "agent_error", "openai_realtime_error", "openai_realtime_connect_failed", "openai_realtime_server_error",
    "openai_realtime_give_up", "openai_realtime_bad_event", "gemini_connect_failed", "gemini_bad_message",
})
"""Events that count as a backend error (by event name); a turn whose record carries `error` counts as `turn_error`."""

LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
BARGE_IN_BUCKETS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)
TICK_BUCKETS = (0.0205, 0.021, 0.022, 0.025, 0.03, 0.04, 0.06, 0.1)
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
JITTER_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)
RTT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
TRUNK_STATES = ("unregistered", "registering", "registered", "failed")
"""A trunk's registration states (telephony/registration.py); `failed` is backing off until its next retry."""
KEEPALIVE_STATES = ("unknown", "up", "down")
"""A trunk's OPTIONS keepalive states (telephony/keepalive.py); `unknown` until the first ping's outcome."""

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class MetricsSource(Protocol):
    """What `/metrics` and `/healthz` serve: one gateway's `GatewayMetrics`, or the workers' sum
    (telephony/cluster_metrics.py)."""

    registry: CollectorRegistry

    def health(self) -> tuple[bool, dict[str, Any]]: ...


def result_label(reason: str) -> str:
    """A call's end reason as a bounded label: `transfer:sip:x@y` -> `transfer`."""
    return reason.split(":", 1)[0] or "unknown"


class GatewayMetrics:
    """An event sink: call events in, Prometheus metrics and the gateway's health out. Thread-safe (events come from
    the pjsua thread, the media clock and the loop)."""

    def __init__(self, route_of: Callable[[str], str], registry: CollectorRegistry | None = None) -> None:
        self.route_of = route_of
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.active = Gauge("voicegate_calls_active", "Calls answered and not ended", ["route", "agent"], registry=r,
                            multiprocess_mode="livesum")
        self.calls = Counter("voicegate_calls", "Calls ended, by end reason", ["route", "agent", "result"],
                             registry=r)
        self.responses = Counter("voicegate_sip_responses", "Final responses to INVITEs: 200 once the caller ACKed "
                                 "it, and the gateway's refusals (404 no route, 503 draining) by code", ["code"],
                                 registry=r)
        self.turn_latency = Histogram("voicegate_turn_latency_seconds", "End of caller speech -> first reply audio",
                                      ["agent", "backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.barge_in = Histogram("voicegate_barge_in_reaction_seconds", "Caller onset -> barge-in confirmed",
                                  ["agent"], buckets=BARGE_IN_BUCKETS, registry=r)
        self.pause = Histogram("voicegate_barge_in_pause_seconds", "Agent paused for a caller sound, then resumed",
                               ["agent"], buckets=BARGE_IN_BUCKETS, registry=r)
        self.tick = Histogram("voicegate_media_tick_p99_seconds", "p99 of the media clock's tick interval, one "
                              "observation per call", buckets=TICK_BUCKETS, registry=r)
        self.backend_errors = Counter("voicegate_backend_errors", "Backend failures, by event", ["agent", "kind"],
                                      registry=r)
        self.dtmf = Counter("voicegate_dtmf", "DTMF digits received (a digit sent both ways counts once)",
                            ["agent", "method"], registry=r)
        self.rtp_loss = Histogram("voicegate_rtp_loss_ratio", "RTP packets lost per call: rx counted here, tx as the "
                                  "far end reported in RTCP", ["direction"], buckets=LOSS_BUCKETS, registry=r)
        self.rtp_jitter = Histogram("voicegate_rtp_jitter_seconds", "Mean interarrival jitter of a call's received "
                                    "RTP", buckets=JITTER_BUCKETS, registry=r)
        self.rtt = Histogram("voicegate_rtp_rtt_seconds", "Mean RTCP round trip of a call", buckets=RTT_BUCKETS,
                             registry=r)
        self.transfers_refused = Counter("voicegate_transfers_refused", "Transfer targets the guard refused "
                                         "(toll fraud: not in the route's transfer_allowed)", ["route", "agent"],
                                         registry=r)
        self.dials_refused = Counter("voicegate_dials_refused", "Outbound calls refused, by HTTP status (403: number "
                                     "not allowed, 429: max_calls_per_min)", ["status"], registry=r)
        self.trunk_state = Gauge("voicegate_trunk_registration", "1 for a trunk's current registration state "
                                 "(failed: backing off before the next REGISTER), 0 for the others",
                                 ["trunk", "state"], registry=r, multiprocess_mode="livesum")
        self.trunk_code = Gauge("voicegate_trunk_last_status_code", "Status code of a trunk's last REGISTER answer "
                                "(pjsip's 408/503 for timeouts and transport errors)", ["trunk"], registry=r,
                                multiprocess_mode="livesum")
        self.trunk_failures = Gauge("voicegate_trunk_failures", "A trunk's failed REGISTERs in a row", ["trunk"],
                                    registry=r, multiprocess_mode="livesum")
        self.keepalive = Gauge("voicegate_trunk_keepalive", "1 for a pinging trunk's current OPTIONS keepalive state "
                               "(up: its last ping was answered, down: timed out or a transport error), 0 for the "
                               "others", ["trunk", "state"], registry=r, multiprocess_mode="livesum")
        self.keepalive_rtt = Gauge("voicegate_trunk_keepalive_rtt_seconds", "Round trip of a trunk's last answered "
                                   "OPTIONS keepalive", ["trunk"], registry=r, multiprocess_mode="livesum")
        self.ready = Gauge("voicegate_ready", "1 when SIP is up and new calls are taken (with workers: how many "
                           "are)", registry=r, multiprocess_mode="livesum")
        self.state = "starting"
        self._lock = threading.Lock()
        self._calls: dict[str, tuple[str, str]] = {}  # call id -> (route, agent), from call_incoming on
        self._active: set[str] = set()

    def __call__(self, name: str, fields: Mapping[str, Any]) -> None:
        handler = self._handlers.get(name)
        if handler is not None:
            handler(self, fields)
        elif name in BACKEND_ERRORS:
            self.backend_errors.labels(self._labels(fields)[1], name).inc()

    def health(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            active = len(self._active)
        return self.state == "ready", {"status": self.state, "calls_active": active}

    # -- handlers -----------------------------------------------------------------------------------------
    def _labels(self, fields: Mapping[str, Any]) -> tuple[str, str]:
        with self._lock:
            return self._calls.get(str(fields.get("call")), ("", str(fields.get("agent", ""))))

    def _incoming(self, f: Mapping[str, Any]) -> None:
        with self._lock:
            self._calls[str(f["call"])] = (self.route_of(str(f.get("called", ""))), "")

    def _refused(self, f: Mapping[str, Any]) -> None:
        self.responses.labels(str(f["code"])).inc()
        with self._lock:
            self._calls.pop(str(f["call"]), None)

    def _answered(self, f: Mapping[str, Any]) -> None:
        call, agent = str(f["call"]), str(f["agent"])
        with self._lock:
            route = self._calls.get(call, ("", ""))[0]
            self._calls[call] = (route, agent)
            self._active.add(call)
        self.responses.labels("200").inc()
        self.active.labels(route, agent).inc()

    def _end(self, f: Mapping[str, Any]) -> None:
        call = str(f["call"])
        with self._lock:
            route, agent = self._calls.pop(call, ("", str(f.get("agent", ""))))
            answered = call in self._active
            self._active.discard(call)
        agent = agent or str(f.get("agent", ""))
        if answered:
            self.active.labels(route, agent).dec()
        self.calls.labels(route, agent, result_label(str(f.get("reason", "")))).inc()
        if isinstance(f.get("tick_p99_ms"), int | float):
            self.tick.observe(float(f["tick_p99_ms"]) / 1000)

    def _turn(self, f: Mapping[str, Any]) -> None:
        agent = self._labels(f)[1]
        if f.get("error"):
            self.backend_errors.labels(agent, "turn_error").inc()
        ms = f.get("first_audio_ms")
        if isinstance(ms, int | float) and f.get("trigger", "speech") == "speech" and not f.get("superseded"):
            backend = str(f.get("backend") or f.get("engine") or "")
            self.turn_latency.labels(agent, backend).observe(float(ms) / 1000)

    def _barge_in(self, f: Mapping[str, Any]) -> None:
        if isinstance(f.get("reaction_ms"), int | float):
            self.barge_in.labels(self._labels(f)[1]).observe(float(f["reaction_ms"]) / 1000)

    def _resumed(self, f: Mapping[str, Any]) -> None:
        if isinstance(f.get("paused_ms"), int | float):
            self.pause.labels(self._labels(f)[1]).observe(float(f["paused_ms"]) / 1000)

    def _dtmf(self, f: Mapping[str, Any]) -> None:
        if not f.get("duplicate"):
            self.dtmf.labels(self._labels(f)[1], str(f.get("method", ""))).inc()

    def _rtp(self, f: Mapping[str, Any]) -> None:
        for direction in ("rx", "tx"):
            if isinstance(f.get(f"{direction}_loss_pct"), int | float):
                self.rtp_loss.labels(direction).observe(float(f[f"{direction}_loss_pct"]) / 100)
        if isinstance(f.get("rx_jitter_ms"), int | float):
            self.rtp_jitter.observe(float(f["rx_jitter_ms"]) / 1000)
        if isinstance(f.get("rtt_ms"), int | float):
            self.rtt.observe(float(f["rtt_ms"]) / 1000)

    def _trunk(self, f: Mapping[str, Any]) -> None:
        trunk, state = str(f["trunk"]), str(f["state"])
        for s in TRUNK_STATES:
            self.trunk_state.labels(trunk, s).set(1 if s == state else 0)
        self.trunk_code.labels(trunk).set(float(f.get("code") or 0))
        self.trunk_failures.labels(trunk).set(float(f.get("failures") or 0))

    def _trunk_added(self, f: Mapping[str, Any]) -> None:
        if f.get("keepalive_s") is not None:
            self._keepalive({"trunk": f["trunk"], "state": "unknown"})

    def _keepalive(self, f: Mapping[str, Any]) -> None:
        trunk, state = str(f["trunk"]), str(f["state"])
        for s in KEEPALIVE_STATES:
            self.keepalive.labels(trunk, s).set(1 if s == state else 0)

    def _ping(self, f: Mapping[str, Any]) -> None:
        if isinstance(f.get("rtt_ms"), int | float):
            self.keepalive_rtt.labels(str(f["trunk"])).set(float(f["rtt_ms"]) / 1000)

    def _trunk_removed(self, f: Mapping[str, Any]) -> None:
        """Drop the trunk's series; set to 0 first, since in multiprocess mode (workers) the value stays in the
        process's file after `remove`."""
        trunk = str(f["trunk"])
        series: list[tuple[Gauge, tuple[str, ...]]] = [(self.trunk_state, (trunk, s)) for s in TRUNK_STATES]
        series += [(self.keepalive, (trunk, s)) for s in KEEPALIVE_STATES]
        series += [(g, (trunk,)) for g in (self.trunk_code, self.trunk_failures, self.keepalive_rtt)]
        for gauge, labels in series:
            gauge.labels(*labels).set(0)
            gauge.remove(*labels)

    def _set_state(self, state: str) -> None:
        self.state = state
        self.ready.set(1 if state == "ready" else 0)

    _handlers: dict[str, Callable[[GatewayMetrics, Mapping[str, Any]], None]] = {
        "call_incoming": _incoming, "call_refused": _refused, "call_answered": _answered, "call_end": _end,
        "turn": _turn, "barge_in": _barge_in, "barge_in_resumed": _resumed, "dtmf": _dtmf, "call_rtp": _rtp,
        "transfer_refused": lambda m, f: m.transfers_refused.labels(*m._labels(f)).inc(),
        "dial_refused": lambda m, f: m.dials_refused.labels(str(f.get("status", ""))).inc(),
        "trunk_state": _trunk, "trunk_removed": _trunk_removed,
        "trunk_added": _trunk_added, "trunk_keepalive": _keepalive, "trunk_keepalive_ping": _ping,
        "gateway_ready": lambda m, _: m._set_state("ready"),
        "gateway_draining": lambda m, _: m._set_state("draining"),
        "gateway_stopped": lambda m, _: m._set_state("stopped"),
    }


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class names it so)
        """Scrapes every few seconds would flood stderr; the JSON event log is the gateway's log."""


def ops_app(metrics: MetricsSource, token: str | None = None) -> WsgiApp:
    """`/metrics` (prometheus_client's app), `/healthz` (200 or 503 with JSON), 404 elsewhere; with a `token`, 401
    for every request without `Authorization: Bearer TOKEN` (compared in constant time)."""
    prometheus = make_wsgi_app(metrics.registry)
    expected = f"Bearer {token}".encode()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if token is not None and not hmac.compare_digest(environ.get("HTTP_AUTHORIZATION", "").encode(), expected):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"a bearer token is required\n"]
        if path == "/metrics":
            return prometheus(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            ok, body = metrics.health()
            data = json.dumps(body).encode()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [data]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


class OpsServer:
    """The HTTP server of `/metrics` and `/healthz`, on a daemon thread."""

    def __init__(self, metrics: MetricsSource, listen: str, port: int, token: str | None = None) -> None:
        try:
            self._server = make_server(listen, port, ops_app(metrics, token), ThreadingWSGIServer,
                                       handler_class=_QuietHandler)
        except OSError as e:
            raise VoicegateError(f"metrics: cannot listen on {listen}:{port}: {e.strerror or e}") from None
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
