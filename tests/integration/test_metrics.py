"""Prometheus metrics and /healthz of a running voicegate: real calls move the counts by exactly the calls made, and
/healthz turns 503 while the gateway drains."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.peers import Gateway, call, free_port, gateway_config, start_gateway
from tests.prompts import SOUNDS

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


HTTP: dict[int, int] = {}
"""The metrics port of each gateway started here, by its SIP port."""
TOKEN = "metrics-token-7f3a"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port, http = free_port(), free_port()
    timeouts = {"silence_reprompt_s": 30, "silence_hangup_s": 60, "shutdown_grace_s": 4}
    os.environ["VG_TEST_METRICS_TOKEN"] = TOKEN  # the gateway subprocess inherits it
    text = gateway_config(port, timeouts=timeouts,
                          metrics={"enabled": True, "port": http, "token_env": "VG_TEST_METRICS_TOKEN"})
    HTTP[port] = http
    g = start_gateway(text, tmp_path_factory.mktemp("gw-metrics"), port)
    yield g
    g.stop()


def get(gw: Gateway, path: str, token: str | None = TOKEN) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{HTTP[gw.port]}{path}", headers=headers)
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


def scrape(gw: Gateway) -> Samples:
    status, text = get(gw, "/metrics")
    assert status == 200, text
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_healthz_is_ok_when_ready(gw: Gateway) -> None:
    status, body = get(gw, "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ready", "calls_active": 0}
    assert get(gw, "/nothing")[0] == 404


def test_a_missing_or_wrong_token_is_refused(gw: Gateway) -> None:
    assert [get(gw, p, None)[0] for p in ("/metrics", "/healthz")] == [401, 401]
    assert get(gw, "/metrics", "wrong")[0] == 401


def test_calls_move_the_counts_by_exactly_the_calls_made(gw: Gateway) -> None:
    target = f"127.0.0.1:{gw.port}"
    before = scrape(gw)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assistant = pool.submit(call, f"sip:assistant@{target}", "--play", str(SOUNDS / "goodbye.wav"),
                                "--speak-at-s", "3.5", "--duration", "15", timeout=40)
        answered = gw.wait_event("call_answered", 15, agent="assistant")
        during = scrape(gw)
        assert value(during, "voicegate_calls_active", route="assistant", agent="assistant") == 1
        assert json.loads(get(gw, "/healthz")[1])["calls_active"] == 1
        echo = call(f"sip:echo@{target}", "--duration", "2.5", "--dtmf", "12@0.5")
        refused = call(f"sip:nobody@{target}", "--duration", "1")
        assert echo["answered"] and refused["status"] == 404
        assert assistant.result()["remote_hangup"]
    ends = [gw.wait_event("call_end", 10, agent=a) for a in ("echo", "assistant")]
    after = scrape(gw)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("voicegate_calls_total", route="echo", agent="echo", result="remote_200") == 1
    assert delta("voicegate_calls_total", route="assistant", agent="assistant", result="agent") == 1
    assert total(after, "voicegate_calls_total") - total(before, "voicegate_calls_total") == 2
    assert value(after, "voicegate_calls_active", route="assistant", agent="assistant") == 0
    assert value(after, "voicegate_calls_active", route="echo", agent="echo") == 0
    assert delta("voicegate_sip_responses_total", code="404") == 1
    assert delta("voicegate_sip_responses_total", code="200") == 2
    assert total(after, "voicegate_dtmf_total", agent="echo") - total(before, "voicegate_dtmf_total", agent="echo") == 2
    [turn] = [t for t in ends[1]["turns"] if t.get("first_audio_ms")]
    assert delta("voicegate_turn_latency_seconds_count", agent="assistant", backend="cascaded") == 1
    assert delta("voicegate_turn_latency_seconds_sum", agent="assistant", backend="cascaded") == pytest.approx(
        turn["first_audio_ms"] / 1000)
    assert delta("voicegate_media_tick_p99_seconds_count") == 2
    assert delta("voicegate_rtp_loss_ratio_count", direction="rx") == 2
    assert answered["call"] == ends[1]["call"]


def test_rtp_loss_is_in_the_record_and_the_metrics(gw: Gateway) -> None:
    before = scrape(gw)
    res = call(f"sip:echo@127.0.0.1:{gw.port}", "--duration", "5", "--loss", "10")
    assert res["answered"]
    end = gw.wait_event("call_end", 10, call=gw.events("call_incoming")[-1]["call"])
    rtp = end["rtp"]
    assert 200 < rtp["rx_pkts"] + rtp["rx_lost"] < 300 and 3 < rtp["rx_loss_pct"] < 25, rtp
    assert 3 < rtp["tx_loss_pct"] < 25 and rtp["rx_jitter_ms"] is not None, rtp  # the caller's RTCP reports
    after = scrape(gw)
    le = {b: value(after, "voicegate_rtp_loss_ratio_bucket", direction="rx", le=str(b))
          - value(before, "voicegate_rtp_loss_ratio_bucket", direction="rx", le=str(b)) for b in (0.02, 0.2)}
    assert le == {0.02: 0, 0.2: 1}, le


def test_healthz_turns_503_while_draining(gw: Gateway) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        caller = pool.submit(call, f"sip:echo@127.0.0.1:{gw.port}", "--duration", "20")
        deadline = time.monotonic() + 15
        while json.loads(get(gw, "/healthz")[1])["calls_active"] == 0:
            assert time.monotonic() < deadline, "the call was not answered"
            time.sleep(0.05)
        gw.proc.send_signal(signal.SIGTERM)
        gw.wait_event("gateway_draining", 5)
        status, body = get(gw, "/healthz")
        assert status == 503 and json.loads(body) == {"status": "draining", "calls_active": 1}
        assert value(scrape(gw), "voicegate_ready") == 0
        assert gw.stop() == 0
        assert caller.result()["remote_hangup"]
