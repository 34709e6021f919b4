"""`voicegate serve --workers 2` behind a real Kamailio front door, called by sipp: calls spread over both workers,
the all-full reply, a worker killed under calls, a worker drained; and one supervised worker's own full reply."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from telephony.app import NO_ACK_S
from telephony.frontdoor import RPC_SOCKET
from telephony.frontdoor_rpc import rpc
from telephony.records import read_records
from telephony.supervisor import options_ping
from tests import audio
from tests.fuzz_sip import blast
from tests.integration.cluster import (
    answered_by,
    cluster_config,
    expect_reply,
    free_block,
    sipp_calls,
    start_cluster,
    stop_all,
    wait_answered,
)
from tests.integration.peers import VENV_BIN, Gateway, call, free_port
from tests.integration.rtp_peer import RtpPeer, answer_port, media_call

BUSY = "All lines are busy. Please call again later."
FUZZ_MESSAGES = int(os.environ.get("FUZZ_MESSAGES", "2000"))
"""Mutated requests per run, half at a worker and half at the front door (`make soak` sends 10,000)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("cluster")
    port, first, http = free_port(), free_block(2), free_port()
    gw = start_cluster(cluster_config(port, {"count": 2, "first_port": first, "probe_interval_s": 1,
                                             "failover_timeout_s": 1.0, "flood_requests": 400, "flood_window_s": 1,
                                             "flood_block_s": 1, "when_full": {"reply": "announcement", "voice": "en",
                                                                               "text": BUSY}},
                                            records={"enabled": True}, metrics={"enabled": True, "port": http}),
                       tmp, port, 2)
    gw.wait_event("gateway_ready", 60, worker=2)  # the announcer
    gw.first_port = first  # type: ignore[attr-defined]
    gw.http = http  # type: ignore[attr-defined]
    yield gw
    rc = gw.stop(40)
    assert rc == 0, "\n".join(gw.lines[-20:])
    gw.wait_event("supervisor_stopped", 1)
    listening = subprocess.run(["ss", "-lunH", f"sport = :{port}"], capture_output=True, text=True).stdout
    assert str(port) not in listening, "kamailio outlived the supervisor"


def frontdoor_rpc_socket(gw: Gateway) -> Path:
    """The running front door's JSON-RPC socket, beside the kamailio.cfg its command line names."""
    kamailio = int(gw.events("frontdoor_started")[-1]["pid"])
    args = Path(f"/proc/{kamailio}/cmdline").read_bytes().split(b"\0")
    return Path(args[args.index(b"-f") + 1].decode()).with_name(RPC_SOCKET)


def worker_pid(gw: Gateway, index: int) -> int:
    return int([e for e in gw.events("worker_started") if e["worker"] == index][-1]["pid"])


def frontdoor_said(gw: Gateway, words: str, after: float) -> list[dict[str, object]]:
    return [e for e in gw.events("frontdoor") if words in str(e["msg"]) and float(e["ts"]) >= after]  # type: ignore[arg-type]


def scrape(gw: Gateway, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gw.http}{path}", timeout=5) as r:  # type: ignore[attr-defined]
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


def sample_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and labels.items() <= s.labels.items())


def test_calls_spread_over_both_workers_and_logs_name_the_worker(cluster: Gateway, tmp_path: Path):
    """...and the supervisor's one /metrics counts every worker's calls."""
    assert {e["worker"] for e in cluster.events("gateway_ready")} == {0, 1, 2}  # 2: the announcer
    status, health = scrape(cluster, "/healthz")
    assert status == 200 and json.loads(health) == {"status": "ready", "front_door": True, "workers_ready": 3,
                                                    "workers": 3, "calls_active": 0}, health
    counted = sample_sum(scrape(cluster)[1], "voicegate_calls_total", result="remote_200")
    before = len(cluster.events("call_answered"))
    p = sipp_calls(cluster.port, tmp_path, 4, 3000)
    got = wait_answered(cluster, before, 4)
    assert sorted(e["worker"] for e in got) == [0, 0, 1, 1]
    assert sample_sum(scrape(cluster)[1], "voicegate_calls_active") == 4
    out, err = p.communicate(timeout=40)
    assert p.returncode == 0, out[-2000:] + err[-1000:]
    for e in got:
        cluster.wait_event("call_end", 10, call=e["call"], reason="remote_200")
    text = scrape(cluster)[1]
    assert sample_sum(text, "voicegate_calls_total", result="remote_200") == counted + 4, text
    assert sample_sum(text, "voicegate_calls_active") == 0 and sample_sum(text, "voicegate_ready") == 3


def events_since(gw: Gateway, name: str, ts: float) -> list[dict[str, Any]]:
    return [e for e in gw.events(name) if float(e["ts"]) >= ts]


def wait_events_since(gw: Gateway, name: str, ts: float, count: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(got := events_since(gw, name, ts)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(got) >= count, f"{count} {name} events not seen within {timeout}s:\n" + "\n".join(gw.lines[-20:])
    return got


def test_sighup_reloads_routes_and_agents_in_every_worker_and_keeps_their_calls(cluster: Gateway, tmp_path: Path):
    """An invalid file is refused once, by the supervisor, with file:line; a valid one is reloaded live by every
    worker (the announcer too) while calls on both run on. The new route stays in the file for the later tests."""
    original = cluster.config.read_text()
    cfg = yaml.safe_load(original)
    cluster.config.write_text(original + "routes_typo: 1\n")
    signalled = time.time()
    cluster.proc.send_signal(signal.SIGHUP)
    (refused,) = wait_events_since(cluster, "config_reload_refused", signalled, 1, 10)
    assert "worker" not in refused and refused["errors"][0].startswith(f"{cluster.config}:"), refused
    cfg["agents"]["reloaded"] = {"type": "echo"}
    cfg["routes"].insert(0, {"match": "reloaded", "agent": "reloaded"})
    cluster.config.write_text(yaml.safe_dump(cfg))
    before = len(cluster.events("call_answered"))
    hold = sipp_calls(cluster.port, tmp_path, 2, 4000)
    held = wait_answered(cluster, before, 2)
    signalled = time.time()
    cluster.proc.send_signal(signal.SIGHUP)
    reloaded = wait_events_since(cluster, "config_reloaded", signalled, 3, 15)
    assert sorted(e["worker"] for e in reloaded) == [0, 1, 2] and not events_since(
        cluster, "config_reload_refused", signalled)
    assert all("reloaded" in e["agents"] and not e["needs_restart"] for e in reloaded if e["worker"] != 2), reloaded
    n = len(cluster.events("call_answered"))
    p = sipp_calls(cluster.port, tmp_path, 2, 200, service="reloaded")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, out[-2000:] + err[-1000:]
    new = wait_answered(cluster, n, 2)
    assert {e["worker"] for e in new} == {0, 1} and {e["agent"] for e in new} == {"reloaded"}, new
    out, err = hold.communicate(timeout=30)
    assert hold.returncode == 0, out[-2000:] + err[-1000:]
    assert {e["worker"] for e in held} == {0, 1}
    for e in held:  # the calls held through the reload ran to the caller's BYE, with the agent they began with
        assert cluster.wait_event("call_end", 10, call=e["call"])["reason"] == "remote_200"


def test_all_workers_full_hears_the_announcement_then_a_hangup(cluster: Gateway, tmp_path: Path):
    before = len(cluster.events("call_answered"))
    hold = sipp_calls(cluster.port, tmp_path, 8, 7000)
    assert {e["worker"] for e in wait_answered(cluster, before, 8)} == {0, 1}
    res = call(f"sip:echo@127.0.0.1:{cluster.port}", "--duration", "12", "--record", str(tmp_path / "rx.wav"))
    assert res["answered"] and res["remote_hangup"] and res["duration_s"] < 8, res
    end = cluster.wait_event("call_end", 10, worker=2)
    assert end["agent"] == "busy" and end["reason"] == "all_lines_busy", end
    assert [e["text"] for e in cluster.events("agent_say") if e.get("worker") == 2] == [BUSY]
    heard = audio.read_wav(tmp_path / "rx.wav")
    assert audio.rms_db(heard) > -45, f"the announcement was not heard ({audio.rms_db(heard):.1f} dB)"
    assert len([e for e in cluster.events("call_refused") if e["code"] == 486]) >= 2  # each worker said full
    out, err = hold.communicate(timeout=40)
    assert hold.returncode == 0, out[-2000:] + err[-1000:]


def test_killed_worker_is_replaced_and_the_other_keeps_its_calls(cluster: Gateway, tmp_path: Path):
    """kill -9 of the worker holding an RTP echo call and sipp calls: its caller's RTP stops and the front door
    sends its callers a BYE, its calls get records ended `worker_died`, new calls go to the other worker, whose
    calls run to their end, and the worker is restarted."""
    before = len(cluster.events("call_answered"))
    peer = RtpPeer()
    media = media_call(cluster, tmp_path, "media", peer, hold_ms=8000, bye_in=True)
    try:
        peer.start(("127.0.0.1", answer_port(tmp_path / "media.port")))
        (first,) = wait_answered(cluster, before, 1)
        index, other = int(first["worker"]), 1 - int(first["worker"])
        assert peer.wait_echo(time.monotonic(), 5), "the echo call returns no audio"
        hold = sipp_calls(cluster.port, tmp_path, 4, 5000)
        held = wait_answered(cluster, before + 1, 4)[1:]
        survivors = {e["call"] for e in held if e["worker"] == other}
        doomed = {first["call"]} | {e["call"] for e in held if e["worker"] == index}
        assert survivors and len(doomed) >= 2, held
        victim = worker_pid(cluster, index)
        counted = sample_sum(scrape(cluster)[1], "voicegate_calls_total")
        killed, killed_mono = time.time(), time.monotonic()
        os.kill(victim, signal.SIGKILL)
        ok_at = None
        while time.time() - killed < 10 and ok_at is None:
            n = len(cluster.events("call_answered"))
            p = sipp_calls(cluster.port, tmp_path, 1, 200)
            p.communicate(timeout=30)
            if p.returncode == 0:
                ok_at = time.time()
                assert answered_by(cluster)[cluster.events("call_answered")[n]["call"]] == other
        assert ok_at is not None and ok_at - killed < 5.0, "no new call got through within 5 s of the kill"
        hold.communicate(timeout=40)
        for cid in survivors:  # the surviving worker's calls ran to their normal end
            cluster.wait_event("call_end", 10, call=cid, reason="remote_200")
        assert time.monotonic() - killed_mono > 2.0
        assert not peer.echoes(killed_mono + 0.2, packets=1), "RTP still came back after the worker died"
        media.communicate(timeout=10)  # it ends once it answered the BYE
        bye = tmp_path / "media.bye"
        assert bye.exists(), "the dead worker's caller got no BYE"
        assert 0 < float(bye.read_text()) - killed < 5.0, "the BYE came more than 5 s after the kill"
    finally:
        peer.close()
        if media.poll() is None:
            media.kill()
            media.communicate(timeout=10)
    cluster.wait_event("worker_exited", 5, worker=index, pid=victim, rc=-9)
    closed = cluster.wait_event("worker_calls_closed", 5, worker=index, pid=victim)
    assert set(cluster.wait_event("worker_calls_ended", 5, worker=index, pid=victim)["calls"]) == doomed
    assert set(closed["calls"]) == doomed and closed["reason"] == "worker_died", closed
    records = {r["call"]: r for r in read_records(cluster.config.parent / "records" / "calls.db")[0]}
    for cid in doomed:
        rec = records[cid]
        died_after = killed - datetime.fromisoformat(rec["start"]).timestamp()
        assert (rec["status"], rec["reason"]) == ("ended", "worker_died") and abs(rec["duration_s"] - died_after) < 1
    assert all(records[cid]["reason"] == "remote_200" for cid in survivors)
    deadline = time.monotonic() + 20
    while not frontdoor_said(cluster, "worker up", killed) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert frontdoor_said(cluster, "worker up", killed), "\n".join(cluster.lines[-20:])
    assert worker_pid(cluster, index) != victim
    assert options_ping("127.0.0.1", cluster.first_port + index) == 200  # type: ignore[attr-defined]
    text = scrape(cluster)[1]  # the dead worker's counts stay in the sum, its calls no longer count as active
    assert sample_sum(text, "voicegate_calls_total") >= counted + len(survivors) + 1, text
    assert sample_sum(text, "voicegate_calls_active") == 0, text


def test_drained_worker_finishes_its_call_gets_no_new_ones_and_comes_back(cluster: Gateway, tmp_path: Path):
    cluster.wait_event("gateway_ready", 20, worker=1)
    time.sleep(1.5)  # both workers up at the front door (probed every second)
    before = len(cluster.events("call_answered"))
    hold = sipp_calls(cluster.port, tmp_path, 1, 4000)
    (first,) = wait_answered(cluster, before, 1)
    index = int(first["worker"])
    pid = worker_pid(cluster, index)
    os.kill(pid, signal.SIGTERM)
    cluster.wait_event("gateway_draining", 5, worker=index)
    assert options_ping("127.0.0.1", cluster.first_port + index) == 503  # type: ignore[attr-defined]
    n = len(cluster.events("call_answered"))
    p = sipp_calls(cluster.port, tmp_path, 3, 200)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, out[-2000:] + err[-1000:]
    assert {e["worker"] for e in cluster.events("call_answered")[n:]} == {1 - index}
    out, err = hold.communicate(timeout=30)
    assert hold.returncode == 0, out[-2000:] + err[-1000:]
    cluster.wait_event("call_end", 10, call=first["call"], reason="remote_200")
    cluster.wait_event("worker_exited", 15, worker=index, pid=pid, rc=0)
    deadline = time.monotonic() + 20
    while worker_pid(cluster, index) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker_pid(cluster, index) != pid


def test_front_door_restart_keeps_the_workers_calls(cluster: Gateway):
    cluster.wait_event("gateway_ready", 20, worker=1)
    result: dict[str, Any] = {}
    before = len(cluster.events("call_answered"))
    t = threading.Thread(target=lambda: result.update(call(f"sip:echo@127.0.0.1:{cluster.port}", "--duration", "6")))
    t.start()
    (answered,) = wait_answered(cluster, before, 1, 20)
    kamailio = int(cluster.events("frontdoor_started")[-1]["pid"])
    killed = time.time()
    os.killpg(kamailio, signal.SIGKILL)
    cluster.wait_event("frontdoor_exited", 5, pid=kamailio)
    deadline = time.monotonic() + 10
    while not [e for e in cluster.events("frontdoor_ready") if e["ts"] >= killed] and time.monotonic() < deadline:
        time.sleep(0.05)
    t.join(40)
    assert result["answered"] and not result["remote_hangup"]  # the caller hung up; its BYE went through the new
    end = cluster.wait_event("call_end", 10, call=answered["call"])  # front door, routed by its Route header
    assert end["reason"] == "remote_200" and end["frames_in"] > 0.8 * 6 * 50, end  # RTP never went through it


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def options_burst(port: int, count: int) -> int:
    """Send `count` OPTIONS as fast as the socket takes them; how many were answered."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.5)
        lport = s.getsockname()[1]
        for n in range(count):
            s.sendto((f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bKb{n}"
                      f"\r\nFrom: <sip:b@127.0.0.1>;tag=b{n}\r\nTo: <sip:127.0.0.1>\r\nCall-ID: burst{n}\r\n"
                      f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(),
                     ("127.0.0.1", port))
        answered = 0
        with contextlib.suppress(TimeoutError):
            while True:
                s.recv(65535)
                answered += 1
    return answered


def test_malformed_sip_crashes_nothing_leaks_no_slot_and_calls_work_after(cluster: Gateway, tmp_path: Path):
    first = cluster.first_port  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while not all(options_ping("127.0.0.1", first + i) == 200 for i in (0, 1)) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # and marked up at the front door
    pids = {i: worker_pid(cluster, i) for i in (0, 1)}
    started = time.time()
    blast("127.0.0.1", first, 200, 1000, seed=9)  # warm-up: pools and caches reach their working size
    blast("127.0.0.1", cluster.port, 200, 300, seed=8)
    rss0 = {i: rss_kb(pid) for i, pid in pids.items()}
    kamailio = frontdoor_rpc_socket(cluster)
    shm0 = int(rpc(kamailio, "core.shmmem")["used"])
    half = FUZZ_MESSAGES // 2
    blast("127.0.0.1", first, half, 1000, seed=1)
    blast("127.0.0.1", cluster.port, half, 300, seed=2)
    answered = options_burst(cluster.port, 1500)
    assert answered < 1500, "pike let a flood through"
    time.sleep(1.5)  # pike lets the source in again
    big = (f"OPTIONS sip:127.0.0.1:{cluster.port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKbig\r\n"
           f"From: <sip:b@127.0.0.1>;tag=big\r\nTo: <sip:127.0.0.1>\r\nCall-ID: big\r\nCSeq: 1 OPTIONS\r\n"
           f"X-Pad: {'a' * 20000}\r\nContent-Length: 0\r\n\r\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(2.0)
        s.sendto(big.replace("127.0.0.1:9;", f"127.0.0.1:{s.getsockname()[1]};").encode(), ("127.0.0.1", cluster.port))
        assert s.recv(65535).startswith(b"SIP/2.0 513 ")
    deadline = time.monotonic() + NO_ACK_S + 10  # fuzzed INVITEs that were answered and never ACKed are released
    while time.monotonic() < deadline:
        opened = {(e["worker"], e["call"]) for e in cluster.events("call_incoming") if e["ts"] >= started}
        closed = {(e["worker"], e["call"]) for name in ("call_end", "call_refused") for e in cluster.events(name)
                  if e["ts"] >= started and e.get("call")}
        if not opened - closed:
            break
        time.sleep(0.2)
    assert not opened - closed, f"calls never ended: {sorted(opened - closed)[:10]}"
    grew = {i: rss_kb(pid) - rss0[i] for i, pid in pids.items()}
    assert not [e for e in cluster.events("worker_exited") if e["ts"] >= started], "a worker died"
    assert not [e for e in cluster.events("frontdoor_exited") if e["ts"] >= started], "kamailio died"
    assert {i: worker_pid(cluster, i) for i in (0, 1)} == pids
    assert max(grew.values()) < 20_000, f"worker RSS grew {grew} kB over {half} mutated requests each way"
    # Kamailio's shared memory (transactions, dialogs, pike's table) is back near where it was once the
    # transactions of the mutated requests have timed out
    shm_grew = int(rpc(kamailio, "core.shmmem")["used"]) - shm0
    print(f"worker RSS grew {grew} kB; kamailio shm used grew {shm_grew} bytes")
    assert shm_grew < 2_000_000, f"the front door's shared memory grew {shm_grew} bytes"
    time.sleep(2.0)  # a worker that left a mutated INVITE unanswered is probed back in
    before = len(cluster.events("call_answered"))
    mark = len(cluster.lines)
    p = sipp_calls(cluster.port, tmp_path, 8, 500)  # every slot of both workers: none leaked
    out, err = p.communicate(timeout=40)
    assert p.returncode == 0, out[-2000:] + err[-1000:] + "\n".join(
        ln[:250] for ln in cluster.lines[mark - 40:] if "pjsip" not in ln)
    assert {e["worker"] for e in wait_answered(cluster, before, 8)} == {0, 1}  # none had to go to the announcer


def test_the_front_door_also_sends_calls_to_a_gateway_elsewhere(tmp_path: Path):
    """"Elsewhere" is a second voicegate on loopback, listed in workers.remote like one on another machine. Dispatch
    is least_loaded: calls alternate, and with 4 calls on each the front door refuses a ninth itself (503). The
    local worker killed with its 4 calls (ended by the front door) takes calls again once restarted: its calls no
    longer count in the front door's load."""
    (tmp_path / "remote").mkdir()
    (tmp_path / "front").mkdir()
    rport, port, first = free_port(), free_port(), free_block(1)
    with ThreadPoolExecutor(2) as pool:  # started side by side: the front door probes the remote one in when it is up
        remote_f = pool.submit(start_cluster, cluster_config(rport, {"when_full": {"reply": 486}}),
                               tmp_path / "remote", rport, 1)
        front_f = pool.submit(start_cluster, cluster_config(port, {
            "first_port": first, "remote": [f"sip:127.0.0.1:{rport}"], "probe_interval_s": 1,
            "dispatch": "least_loaded"}), tmp_path / "front", port, 1, 60.0, True)
    started = [f.result() for f in (remote_f, front_f) if f.exception() is None]
    if len(started) < 2:
        for gw in started:
            gw.stop()
        remote_f.result(), front_f.result()  # raises the failure
    remote, front = started
    try:
        time.sleep(1.2)  # a probe sent before the remote gateway was up has landed; wait until one succeeds

        def remote_in() -> bool:
            downs, ups = frontdoor_said(front, "worker down", 0), frontdoor_said(front, "worker up", 0)
            return not downs or bool(ups and float(ups[-1]["ts"]) >= float(downs[-1]["ts"]))  # type: ignore[arg-type]

        deadline = time.monotonic() + 10
        while not remote_in() and time.monotonic() < deadline:
            time.sleep(0.1)
        p = sipp_calls(port, tmp_path, 6, 1000)
        out, err = p.communicate(timeout=40)
        assert p.returncode == 0, out[-2000:] + err[-1000:]
        assert len(wait_answered(front, 0, 3)) == 3 and len(wait_answered(remote, 0, 3)) == 3
        for gw in (front, remote):
            for e in gw.events("call_answered"):
                gw.wait_event("call_end", 10, call=e["call"], reason="remote_200")
        hold = sipp_calls(port, tmp_path, 8, 5000)  # the loads went back to 0 with the BYEs: 4 fit on each
        doomed = {e["call"] for e in wait_answered(front, 3, 4)}
        survivors = wait_answered(remote, 3, 4)
        refusals = len(front.events("call_refused"))
        assert expect_reply(port, tmp_path, 503, "Retry-After: 30") < 2.0
        assert len(front.events("call_refused")) == refusals  # refused at the door: no worker was asked
        victim = worker_pid(front, 0)
        os.kill(victim, signal.SIGKILL)
        assert set(front.wait_event("worker_calls_ended", 10, worker=0, pid=victim)["calls"]) == doomed
        hold.communicate(timeout=40)  # the killed worker's 4 calls failed, the remote's ran to their end:
        for e in survivors:
            remote.wait_event("call_end", 10, call=e["call"], reason="remote_200")
        deadline = time.monotonic() + 20
        while options_ping("127.0.0.1", first) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker_pid(front, 0) != victim
        n = len(front.events("call_answered"))
        while len(front.events("call_answered")) == n and time.monotonic() < deadline:
            p = sipp_calls(port, tmp_path, 2, 200)  # to the remote one until the front door probed it back in
            out, err = p.communicate(timeout=30)
            assert p.returncode == 0, out[-2000:] + err[-1000:]
        assert len(front.events("call_answered")) > n, "the restarted worker got no call: its dead calls load it"
    finally:
        assert stop_all(front, remote) == [0, 0]


def test_serve_names_a_missing_kamailio(tmp_path: Path):
    cfg = tmp_path / "vg.yaml"
    cfg.write_text(cluster_config(free_port(), {"count": 2, "first_port": free_block(2),
                                                "kamailio": "/nonexistent/kamailio"}))
    r = subprocess.run([str(VENV_BIN / "voicegate"), "serve", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 3 and "cannot run kamailio (/nonexistent/kamailio, workers.kamailio" in r.stderr, r.stderr
    assert '"worker_started"' not in r.stderr  # nothing was started


def test_one_full_worker_refuses_the_fifth_call_as_configured(tmp_path: Path):
    """Not pjsua's own 486: the configured 480 (486, the other choice, is what workers behind the front door say)."""
    port = free_port()
    gw = start_cluster(cluster_config(port, {"when_full": {"reply": 480}}), tmp_path, port, 1)
    try:
        hold = sipp_calls(port, tmp_path, 4, 1500)
        wait_answered(gw, 0, 4)
        assert expect_reply(port, tmp_path, 480) < 2.0
        gw.wait_event("call_refused", 2, code=480, reason="full")
        out, err = hold.communicate(timeout=30)
        assert hold.returncode == 0, out[-2000:] + err[-1000:]
    finally:
        assert gw.stop(30) == 0
