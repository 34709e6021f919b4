"""`POST /calls/<Call-ID>/pcap` with `voicegate serve --workers 2`: worker 0's control endpoint finds the worker that
holds the call (telephony/workers.py `control_peers`), and names the workers when none does."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dpkt
import pytest

from tests.integration.cluster import answered_by, cluster_config, free_block, sipp_calls, start_cluster, wait_answered
from tests.integration.peers import Gateway, free_port

TOKEN = "cluster-pcap-token"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    os.environ["VG_TEST_CLUSTER_TOKEN"] = TOKEN
    port, first, control = free_port(), free_block(2), free_port()
    config = cluster_config(port, {"count": 2, "first_port": first, "probe_interval_s": 1},
                            records={"enabled": False, "sip_trace": True},
                            control={"listen": "127.0.0.1", "port": control, "token_env": "VG_TEST_CLUSTER_TOKEN"})
    gw = start_cluster(config, tmp_path_factory.mktemp("cluster-pcap"), port, 2)
    gw.control_port = control  # type: ignore[attr-defined]
    yield gw
    assert gw.stop(40) == 0, "\n".join(gw.lines[-20:])


def ask(gw: Gateway, call_id: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{gw.control_port}/calls/{call_id}/pcap",  # type: ignore[attr-defined]
                                 data=b"", method="POST", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), json.loads(e.read())


def test_worker_0_captures_the_calls_of_either_worker(cluster: Gateway, tmp_path: Path):
    assert ask(cluster, "no-such-call") == (404, {"error": "no live SIP call with Call-ID 'no-such-call' on any of "
                                                           "the 2 workers"})
    before = len(cluster.events("call_answered"))
    p = sipp_calls(cluster.port, tmp_path, 2, 3000)
    try:
        calls = answered_by(cluster, {e["call"] for e in wait_answered(cluster, before, 2)})
        assert sorted(calls.values()) == [0, 1], calls  # one call on each worker (round robin)
        asked = {c: ask(cluster, c) for c in calls}
    finally:
        out, err = p.communicate(timeout=40)
    assert p.returncode == 0, out[-2000:] + err[-1000:]
    for c, worker in calls.items():
        status, body = asked[c]
        assert status == 202 and body["call"] == c, body
        end = cluster.wait_event("call_end", 15, call=c)
        assert end["worker"] == worker and end["pcap"] == body["pcap"], end
        with open(body["pcap"], "rb") as f:
            frames = [dpkt.ethernet.Ethernet(buf) for _, buf in dpkt.pcap.Reader(f)]
        assert bytes(frames[0].data.data.data).startswith(b"INVITE sip:echo@"), frames[0]
    # worker 1's endpoint (on loopback, at its SIP port's number) places no calls: that is worker 0's
    w1 = next(e["port"] for e in cluster.events("worker_started") if e["worker"] == 1)
    req = urllib.request.Request(f"http://127.0.0.1:{w1}/calls", data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 404 and "worker 0" in json.loads(e.value.read())["error"]
    [fwd] = cluster.events("pcap_forwarded")  # worker 0 asked worker 1 for the call worker 1 held
    assert (fwd["worker"], fwd["held_by"], calls[fwd["call"]]) == (0, 1, 1), fwd
