"""GatewayMetrics fed call events through the logs sink: labels, histograms, backend errors and health."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from telephony.errors import VoicegateError
from telephony.logs import event, subscribe
from telephony.metrics import GatewayMetrics, OpsServer


@pytest.fixture
def m() -> Iterator[GatewayMetrics]:
    metrics = GatewayMetrics(lambda called: "/^4/" if called.startswith("4") else "*")
    unsubscribe = subscribe(metrics)
    yield metrics
    unsubscribe()


def get(m: GatewayMetrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_a_call_with_barge_ins_transfer_and_a_backend_error(m: GatewayMetrics) -> None:
    event("gateway_ready")
    event("call_incoming", call="c1", called="4711", caller="sip:a@b")
    event("call_answered", call="c1", agent="bot", answer_ms=12.0)
    assert get(m, "voicegate_calls_active", route="/^4/", agent="bot") == 1
    event("barge_in", call="c1", reaction_ms=80.0)
    event("barge_in_resumed", call="c1", paused_ms=300.0)
    event("dtmf", call="c1", digit="1", method="rfc4733", duplicate=False)
    event("dtmf", call="c1", digit="1", method="info", duplicate=True)
    event("turn", call="c1", backend="cascaded", first_audio_ms=640.0)
    event("turn", call="c1", backend="cascaded", first_audio_ms=50.0, trigger="dtmf")
    event("turn", call="c1", backend="cascaded", error="asr worker died")
    event("openai_realtime_connect_failed", call="c1", url="ws://x", attempt=1)
    event("call_rtp", call="c1", rx_loss_pct=1.5, tx_loss_pct=0.0, rx_jitter_ms=4.0, rtt_ms=None)
    event("transfer_refused", call="c1", target="sip:+882@evil", reason="matches no transfer_allowed pattern")
    event("dial_refused", number="+882", agent="bot", trunk=None, status=403, reason="not allowed")
    event("call_end", call="c1", agent="bot", reason="transfer:sip:op@example.com", tick_p99_ms=21.0)
    assert get(m, "voicegate_calls_active", route="/^4/", agent="bot") == 0
    assert get(m, "voicegate_calls_total", route="/^4/", agent="bot", result="transfer") == 1
    assert get(m, "voicegate_barge_in_reaction_seconds_sum", agent="bot") == pytest.approx(0.08)
    assert get(m, "voicegate_barge_in_pause_seconds_bucket", agent="bot", le="0.3") == 1
    assert get(m, "voicegate_dtmf_total", agent="bot", method="rfc4733") == 1
    assert get(m, "voicegate_dtmf_total", agent="bot", method="info") == 0
    assert get(m, "voicegate_turn_latency_seconds_count", agent="bot", backend="cascaded") == 1
    assert get(m, "voicegate_backend_errors_total", agent="bot", kind="turn_error") == 1
    assert get(m, "voicegate_backend_errors_total", agent="bot", kind="openai_realtime_connect_failed") == 1
    assert get(m, "voicegate_media_tick_p99_seconds_bucket", le="0.021") == 1
    assert get(m, "voicegate_transfers_refused_total", route="/^4/", agent="bot") == 1
    assert get(m, "voicegate_dials_refused_total", status="403") == 1
    assert get(m, "voicegate_rtp_loss_ratio_bucket", direction="rx", le="0.01") == 0
    assert get(m, "voicegate_rtp_loss_ratio_bucket", direction="rx", le="0.02") == 1
    assert get(m, "voicegate_rtp_loss_ratio_bucket", direction="tx", le="0.0") == 1
    assert get(m, "voicegate_rtp_jitter_seconds_sum") == pytest.approx(0.004)
    assert get(m, "voicegate_rtp_rtt_seconds_count") == 0  # no RTCP report came back
    assert m.health() == (True, {"status": "ready", "calls_active": 0})


def test_refusals_and_an_unanswered_call_leave_no_active_call(m: GatewayMetrics) -> None:
    event("call_incoming", call="r", called="9", caller="x")
    event("call_refused", call="r", called="9", code=404, reason="no route")
    event("call_incoming", call="u", called="9", caller="x")
    event("call_end", call="u", agent="bot", reason="remote_487")  # caller gave up before the answer
    assert get(m, "voicegate_sip_responses_total", code="404") == 1
    assert get(m, "voicegate_calls_total", route="*", agent="bot", result="remote_487") == 1
    assert get(m, "voicegate_calls_active", route="*", agent="bot") == 0
    assert m.health() == (False, {"status": "starting", "calls_active": 0})
    event("gateway_ready")
    event("gateway_draining", calls=0, grace_s=1)
    assert m.health()[0] is False and get(m, "voicegate_ready") == 0


def test_a_failing_sink_is_reported_and_does_not_stop_the_others(m: GatewayMetrics,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    def broken(name: str, fields: object) -> None:
        raise RuntimeError("boom")

    unsubscribe = subscribe(broken)
    try:
        event("call_refused", call="z", called="0", code=503, reason="shutting down")
    finally:
        unsubscribe()
    assert get(m, "voicegate_sip_responses_total", code="503") == 1
    assert any('"sink_error"' in r.message and "boom" in r.message for r in caplog.records)


def test_the_http_server_routes_metrics_and_health_and_names_a_busy_port(m: GatewayMetrics) -> None:
    server = OpsServer(m, "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{server.port}"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/healthz", timeout=5)
        assert e.value.code == 503 and json.loads(e.value.read()) == {"status": "starting", "calls_active": 0}
        event("gateway_ready")
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            assert b"voicegate_ready 1.0" in r.read()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/", timeout=5)
        assert e.value.code == 404
        with pytest.raises(VoicegateError, match=rf"metrics: cannot listen on 127.0.0.1:{server.port}: "):
            OpsServer(m, "127.0.0.1", server.port)
    finally:
        server.close()


def test_backend_events_of_the_speech_to_speech_agents_reach_the_metrics(m: GatewayMetrics) -> None:
    from agents import gemini_live, openai_realtime

    event("call_incoming", call="s", called="9", caller="x")
    event("call_answered", call="s", agent="rt", answer_ms=5.0)
    openai_realtime._event("openai_realtime_connect_failed", call="s", url="ws://127.0.0.1:1", error="refused")
    gemini_live._event("gemini_bad_message", call="s", error="server sent invalid JSON")
    assert get(m, "voicegate_backend_errors_total", agent="rt", kind="openai_realtime_connect_failed") == 1
    assert get(m, "voicegate_backend_errors_total", agent="rt", kind="gemini_bad_message") == 1


def test_trunk_registration_state_and_last_code(m: GatewayMetrics) -> None:
    event("trunk_state", trunk="main", state="registering", code=0, reason="", failures=0, refreshes=0)
    assert get(m, "voicegate_trunk_registration", trunk="main", state="registering") == 1
    event("trunk_state", trunk="main", state="failed", code=401, reason="Unauthorized", failures=1, refreshes=0,
          retry_in_s=1.0)
    assert get(m, "voicegate_trunk_registration", trunk="main", state="failed") == 1
    assert get(m, "voicegate_trunk_registration", trunk="main", state="registering") == 0
    assert get(m, "voicegate_trunk_last_status_code", trunk="main") == 401
    assert get(m, "voicegate_trunk_failures", trunk="main") == 1
    event("trunk_state", trunk="main", state="registered", code=200, reason="OK", failures=0, refreshes=0,
          expires_s=60.0)
    assert [get(m, "voicegate_trunk_registration", trunk="main", state=s)
            for s in ("unregistered", "registering", "registered", "failed")] == [0, 0, 1, 0]
    assert get(m, "voicegate_trunk_last_status_code", trunk="main") == 200
    assert get(m, "voicegate_trunk_failures", trunk="main") == 0
    event("trunk_removed", trunk="main", replaced=False)
    assert m.registry.get_sample_value("voicegate_trunk_registration", {"trunk": "main", "state": "registered"}) \
        is None
    assert m.registry.get_sample_value("voicegate_trunk_last_status_code", {"trunk": "main"}) is None


def test_trunk_keepalive_state_and_last_round_trip(m: GatewayMetrics) -> None:
    event("trunk_added", trunk="quiet", registrar="sip:x", keepalive_s=None)
    assert m.registry.get_sample_value("voicegate_trunk_keepalive", {"trunk": "quiet", "state": "unknown"}) is None
    event("trunk_added", trunk="main", registrar="sip:x", keepalive_s=5.0)
    assert [get(m, "voicegate_trunk_keepalive", trunk="main", state=s) for s in ("unknown", "up", "down")] == [1, 0, 0]
    event("trunk_keepalive_ping", trunk="main", code=200, rtt_ms=12.0)
    event("trunk_keepalive", trunk="main", state="up", code=200, rtt_ms=12.0, sent=1, answered=1)
    assert [get(m, "voicegate_trunk_keepalive", trunk="main", state=s) for s in ("unknown", "up", "down")] == [0, 1, 0]
    event("trunk_keepalive_ping", trunk="main", code=200, rtt_ms=3.5)  # no state change: the round trip still moves
    assert get(m, "voicegate_trunk_keepalive_rtt_seconds", trunk="main") == 0.0035
    event("trunk_keepalive_ping", trunk="main", code=408, rtt_ms=None)
    event("trunk_keepalive", trunk="main", state="down", code=408, rtt_ms=None, sent=3, answered=2)
    assert [get(m, "voicegate_trunk_keepalive", trunk="main", state=s) for s in ("unknown", "up", "down")] == [0, 0, 1]
    assert get(m, "voicegate_trunk_keepalive_rtt_seconds", trunk="main") == 0.0035, "the last answered ping's"
    event("trunk_removed", trunk="main", replaced=False)
    assert m.registry.get_sample_value("voicegate_trunk_keepalive", {"trunk": "main", "state": "down"}) is None
    assert m.registry.get_sample_value("voicegate_trunk_keepalive_rtt_seconds", {"trunk": "main"}) is None
