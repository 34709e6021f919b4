"""Call records and cost through a running voicegate: real calls append record lines, `voicegate calls` lists them,
and a call cut by SIGTERM is recorded too."""

from __future__ import annotations

import concurrent.futures
import csv
import io
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agents.cost import Prices
from media.emodel import mos, r_factor
from telephony.records import RecordWriter, call_record, read_records
from tests.integration.peers import VENV_BIN, Gateway, call, free_port, gateway_config, start_gateway
from tests.prompts import SOUNDS

PRICES = {"currency": "USD", "sip_per_min": 0.01, "asr_per_min": 0.006, "tts_per_char": 0.0001}


OLD_DAYS = 40
"""The age of a call seeded into the records before the gateway starts, past its `retention_days` (30)."""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port = free_port()
    timeouts = {"silence_reprompt_s": 30, "silence_hangup_s": 60, "shutdown_grace_s": 0.5}
    tmp = tmp_path_factory.mktemp("gw-rec")
    (tmp / "records").mkdir()
    (tmp / "records" / "old.wav").write_bytes(b"RIFF")
    end = {"call": "old-call", "agent": "echo", "reason": "agent", "sip_code": 200, "duration_s": 5.0, "turns": []}
    old = call_record(end, time.time() - OLD_DAYS * 86400, "sip:1@x", "echo", "echo", {}, Prices())
    RecordWriter(tmp / "records" / "calls.db", lambda name, **f: None).write(
        {**old, "recording": str(tmp / "records" / "old.wav")})
    keep = {"retention_days": 30, "purge_every_h": 24}
    g = start_gateway(gateway_config(port, prices=PRICES, timeouts=timeouts, records=keep), tmp, port)
    yield g
    g.stop()


def records(gw: Gateway) -> dict[str, dict[str, Any]]:
    recs, bad = read_records(gw.config.parent / "records" / "calls.db")
    assert not bad
    return {r["call"]: r for r in recs}


def voicegate_calls(*args: str) -> str:
    proc = subprocess.run([str(VENV_BIN / "voicegate"), "calls", *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_echo_and_assistant_calls_are_recorded_with_cost_and_listed(gw: Gateway) -> None:
    target = f"127.0.0.1:{gw.port}"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        echo = pool.submit(call, f"sip:echo@{target}", "--duration", "2")
        assistant = pool.submit(call, f"sip:assistant@{target}", "--play", str(SOUNDS / "goodbye.wav"),
                                "--speak-at-s", "3.5", "--duration", "15", timeout=40)
        assert echo.result()["answered"] and assistant.result()["remote_hangup"]
    ends = {e["agent"]: e for e in (gw.wait_event("call_end", 10, agent=a) for a in ("echo", "assistant"))}
    recs = records(gw)
    e, a = recs[ends["echo"]["call"]], recs[ends["assistant"]["call"]]
    for rec in (e, a):  # every call_end field, plus who, what, cost and latency
        end = ends[rec["agent"]]
        assert {k: rec[k] for k in end if k not in ("ts", "event")} == {k: v for k, v in end.items()
                                                                        if k not in ("ts", "event")}
        assert rec["start"][:2] == "20" and "sip:" in rec["caller"]
    assert e["called"] == "echo" and e["agent_type"] == "echo" and e["backends"] == {"echo": 0}
    assert e["cost"] == {"by_backend": {"sip": round(e["duration_s"] / 60 * 0.01, 6)},
                         "total": round(e["duration_s"] / 60 * 0.01, 6), "currency": "USD"}
    assert e["latency"] == {"turn_p50_ms": None, "turn_p95_ms": None}
    rtp = e["rtp"]  # the caller's PCMU on loopback: no loss, the E-model's rating from the call's own figures
    assert e["codec"] == "PCMU/8000" and rtp["rx_loss_pct"] == 0 and rtp["rx_pkts"] > 50, rtp
    assert rtp["delay_ms"] == round((rtp["rtt_ms"] or 0) / 2 + rtp["jbuf_delay_ms"] + 20, 1)
    assert rtp["r_factor"] == round(r_factor("PCMU", max(rtp["rx_loss_pct"], rtp["tx_loss_pct"]),
                                             rtp["delay_ms"]) or 0, 1)
    assert rtp["mos"] == round(mos(rtp["r_factor"]), 2) and 4.0 < rtp["mos"] <= 4.41, rtp

    assert a["reason"] == "agent" and a["backends"] == {"cascaded": 1}, a
    [turn] = a["turns"]
    assert a["latency"]["turn_p50_ms"] == turn["first_audio_ms"] > 0
    assert 0.5 < a["usage"]["asr_s"] < 3 and a["usage"]["tts_chars"] > len(turn["reply"]), a["usage"]  # + greeting
    by = a["cost"]["by_backend"]
    assert set(by) == {"sip", "asr", "tts"} and by["tts"] == round(a["usage"]["tts_chars"] * 0.0001, 6)
    assert a["cost"]["total"] == pytest.approx(sum(by.values()), abs=1e-6)

    listed = voicegate_calls("--records", str(gw.config.parent / "records/calls.db")).splitlines()
    assert len(listed) == 4 and listed[-1].startswith("2 calls, ")
    rows = {row.split()[4]: row.split() for row in listed[1:3]}
    assert rows["assistant"][6:10] == [f"0:{round(a['duration_s']):02d}", "agent", "cascaded", "1"], rows
    assert rows["echo"][7:9] == ["remote_200", "echo"] and rows["echo"][-1] == f"{rtp['mos']:.2f}", rows
    assert rows["assistant"][-1] == f"{a['rtp']['mos']:.2f}", rows
    data = json.loads(voicegate_calls("--config", str(gw.config), "--json", "--last", "1"))
    assert len(data["calls"]) == 1 and data["totals"]["calls"] == 1
    cdr = {r["agent"]: r for r in csv.DictReader(io.StringIO(voicegate_calls("--config", str(gw.config), "--csv",
                                                                             "-")))}
    assert cdr["echo"]["hangup_side"] == "caller" and cdr["assistant"]["hangup_side"] == "agent"
    assert float(cdr["assistant"]["turn_p50_ms"]) == turn["first_audio_ms"]
    assert float(cdr["echo"]["cost"]) == e["cost"]["total"] and cdr["echo"]["sip_code"] == "200"
    assert float(cdr["echo"]["mos"]) == rtp["mos"] and float(cdr["echo"]["r_factor"]) == rtp["r_factor"]


def test_a_call_cut_by_sigterm_is_recorded(gw: Gateway) -> None:
    before = {e["call"] for e in gw.events("call_answered")}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        caller = pool.submit(call, f"sip:echo@127.0.0.1:{gw.port}", "--duration", "20")
        deadline = time.monotonic() + 10
        while not (new := [e["call"] for e in gw.events("call_answered") if e["call"] not in before]):
            assert time.monotonic() < deadline, "the call was not answered"
            time.sleep(0.05)
        [cut] = new
        assert gw.stop() == 0
        assert caller.result()["remote_hangup"]
    rec = records(gw)[cut]
    assert rec["reason"] == "shutdown" and rec["cost"]["by_backend"]["sip"] > 0


def test_the_running_gateway_purges_a_call_past_its_retention_at_start(gw: Gateway) -> None:
    purged = gw.wait_event("records_purged", 5)
    assert purged["calls"] == ["old-call"] and purged["files_removed"] == 1 and purged["audit_seq"] == 1, purged
    assert "old-call" not in records(gw) and not (gw.config.parent / "records" / "old.wav").exists()
