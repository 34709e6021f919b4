"""Cost accounting and call records: the meter, the price math, the record line, the writer and `voicegate calls`."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import math
import sqlite3
import stat
from datetime import datetime
from pathlib import Path

import pytest

from agents.brain import LlmBrain, UserTurn
from agents.cost import CHARS_PER_TOKEN, Meter, Prices, llm_tokens, price
from agents.llm import Done, LlmClient, LlmConfig, LlmError, TextDelta, ToolCall, Usage
from telephony.cli import main
from telephony.config import ConfigError, load_config, parse_config
from telephony.records import (
    RecordWriter,
    backend_mix,
    call_record,
    hangup_side,
    read_records,
    table,
    turn_latency,
)
from tests.servers.llm import LlmServer, Reply, chunk

PRICES = Prices.model_validate({
    "currency": "EUR",
    "s2s": {"openai_realtime": {"in_per_min": 0.06, "out_per_min": 0.24}},
    "llm": {"in_per_1k_tokens": 0.5, "out_per_1k_tokens": 2.0},
    "tts_per_char": 0.001, "asr_per_min": 0.01, "sip_per_min": 0.02,
})


def test_meter_sums_per_kind_and_refuses_unknown_kinds_and_bad_amounts():
    m = Meter()
    m.add("tts_chars", 10)
    m.add("tts_chars", 5)
    m.add("gemini_live_out_s", 1.5)
    assert m.usage == {"tts_chars": 15, "gemini_live_out_s": 1.5}
    with pytest.raises(ValueError, match="unknown usage kind 'tts_words'"):
        m.add("tts_words", 1)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite and not negative"):
            m.add("asr_s", bad)


def test_price_per_backend_and_total():
    usage = {"asr_s": 90.0, "tts_chars": 200, "llm_in_tokens": 1000, "llm_out_tokens": 100,
             "openai_realtime_in_s": 60.0, "openai_realtime_out_s": 30.0}
    c = price(usage, 120.0, PRICES)
    assert c.by_backend == {"sip": 0.04, "asr": 0.015, "llm": 0.7, "tts": 0.2, "openai_realtime": 0.18}
    assert c.total == pytest.approx(1.135) and c.currency == "EUR"


def test_llm_characters_are_estimated_as_tokens_and_add_to_reported_tokens():
    usage = {"llm_in_tokens": 100, "llm_in_chars": 4000, "llm_out_chars": 400}
    assert llm_tokens(usage) == (100 + 4000 / CHARS_PER_TOKEN, 400 / CHARS_PER_TOKEN)
    assert price(usage, 0.0, PRICES).by_backend == {"llm": pytest.approx(1.1 * 0.5 + 0.1 * 2.0)}


def test_backends_used_at_price_zero_still_show_and_unused_ones_do_not():
    c = price({"gemini_live_in_s": 5.0, "tts_chars": 3}, 10.0, Prices())
    assert c.by_backend == {"sip": 0.0, "tts": 0.0, "gemini_live": 0.0} and c.total == 0.0


def test_prices_and_records_config_with_line_numbered_errors(tmp_path: Path):
    base = "agents: {e: {type: echo}}\nroutes: [{match: '*', agent: e}]\n"
    cfg = parse_config(base)
    assert cfg.records.enabled and cfg.records.path == "records/calls.db" and cfg.prices.sip_per_min == 0
    bad = base + "prices:\n  currency: USD\n  s2s:\n    openai_realtme: {in_per_min: 1}\n  tts_per_char: -1\n"
    with pytest.raises(ConfigError) as e:
        parse_config(bad, "vg.yaml")
    assert [str(i).split(": ")[0:2] for i in e.value.issues] == [
        ["vg.yaml:6", "prices.s2s.openai_realtme"], ["vg.yaml:7", "prices.tts_per_char"]]
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/vg.yaml").write_text(base)
    assert load_config(tmp_path / "etc/vg.yaml").records.path == str(tmp_path / "etc/records/calls.db")
    (tmp_path / "etc/vg.yaml").write_text(base + "records: {path: /var/log/vg/calls.db}\n")
    assert load_config(tmp_path / "etc/vg.yaml").records.path == "/var/log/vg/calls.db"


TURNS = [
    {"backend": "gemini_live", "trigger": "greeting", "first_audio_ms": 900.0},
    {"backend": "gemini_live", "trigger": "speech", "first_audio_ms": 400.0},
    {"engine": "openai_realtime", "trigger": "speech", "first_audio_ms": 600.0},
    {"text": "hello", "first_audio_ms": 500.0},
    {"text": "hello there", "first_audio_ms": 80.0, "superseded": True},
    {"dtmf": "1", "reply": "ok"},
]


def test_turn_latency_counts_answers_to_caller_speech_only():
    assert turn_latency(TURNS) == {"turn_p50_ms": 500.0, "turn_p95_ms": 590.0}
    assert turn_latency([{"dtmf": "1"}]) == {"turn_p50_ms": None, "turn_p95_ms": None}


def test_backend_mix_counts_turns_per_backend():
    assert backend_mix(TURNS, "hybrid") == {"gemini_live": 2, "openai_realtime": 1, "hybrid": 3}
    assert backend_mix([], "echo") == {"echo": 0}


def _end(call: str, **kw: object) -> dict[str, object]:
    end: dict[str, object] = {"call": call, "agent": "assistant", "reason": "remote_200", "sip_code": 200,
                              "sip_reason": "Normal call clearing", "duration_s": 90.0, "codec": "G722/16000",
                              "barge_ins": 1, "turns": TURNS[3:4]}
    end.update(kw)
    return end


def test_call_record_has_the_call_end_fields_and_who_what_cost_latency():
    rec = call_record(_end("c1"), 1_750_000_000.25, "<sip:alice@10.0.0.1>", "100", "cascaded",
                      {"asr_s": 12.3456, "tts_chars": 80}, PRICES)
    assert list(rec)[:7] == ["call", "start", "caller", "called", "agent", "agent_type", "backends"]
    assert rec["start"].startswith("2025-06-") and rec["start"].count(":") >= 2
    assert rec["backends"] == {"cascaded": 1} and rec["barge_ins"] == 1 and rec["codec"] == "G722/16000"
    assert rec["usage"] == {"asr_s": 12.346, "tts_chars": 80}
    assert rec["cost"] == {"by_backend": {"sip": 0.03, "asr": pytest.approx(0.002058), "tts": 0.08},
                           "total": pytest.approx(0.112058), "currency": "EUR"}
    assert rec["latency"] == {"turn_p50_ms": 500.0, "turn_p95_ms": 500.0}
    json.dumps(rec)


def test_writer_inserts_rows_and_logs_a_failure_instead_of_raising(tmp_path: Path):
    logged: list[tuple[str, dict[str, object]]] = []
    w = RecordWriter(tmp_path / "sub/calls.db", lambda name, **f: logged.append((name, f)))
    w.write(call_record(_end("a", digits="12#", rtp={"rx_loss_pct": 1.25, "tx_loss_pct": 0.0, "rx_jitter_ms": 3.5,
                                                      "rtt_ms": None, "r_factor": 88.5, "mos": 4.27}),
                        1_750_000_000.0, "<sip:+4930123@pbx>", "100", "cascaded", {}, PRICES))
    w.write(call_record(_end("b", reason="shutdown"), 1_750_000_060.0, "<sip:bob@pbx>", "100", "echo", {}, PRICES))
    assert stat.S_IMODE((tmp_path / "sub/calls.db").stat().st_mode) == 0o640
    db = sqlite3.connect(tmp_path / "sub/calls.db")
    rows = db.execute("SELECT call, caller_number, duration_s, reason, sip_code, hangup_side, backends, cost, "
                      "currency, turn_p50_ms, barge_ins, dtmf_count, end, record, rx_loss_pct, rx_jitter_ms, rtt_ms, "
                      "r_factor, mos "
                      "FROM calls ORDER BY id").fetchall()
    assert [r[:12] for r in rows] == [
        ("a", "+4930123", 90.0, "remote_200", 200, "caller", "cascaded:1", 0.03, "EUR", 500.0, 1, 3),
        ("b", "bob", 90.0, "shutdown", 200, "gateway", "echo:1", 0.03, "EUR", 500.0, 1, 0)]
    assert datetime.fromisoformat(rows[0][12]).timestamp() == 1_750_000_090.0
    assert json.loads(rows[1][13])["agent_type"] == "echo"
    assert [r[14:] for r in rows] == [(1.25, 3.5, None, 88.5, 4.27), (None, None, None, None, None)]
    assert read_records(tmp_path / "sub/calls.db") == ([json.loads(r[13]) for r in rows], [])
    (tmp_path / "dir.db").mkdir()
    RecordWriter(tmp_path / "dir.db", lambda name, **f: logged.append((name, f))).write({"call": "c", "start": "x"})
    assert logged == [("records_error", {"call": "c", "path": str(tmp_path / "dir.db"), "error": "Is a directory"})]
    (tmp_path / "old.jsonl").write_text('{"call": "x", "start": "2025-01-01T00:00:00"}\n')
    RecordWriter(tmp_path / "old.jsonl", lambda name, **f: logged.append((name, f))).write(
        call_record(_end("d"), 1_750_000_000.0, "<sip:bob@pbx>", "100", "echo", {}, PRICES))
    assert logged[-1] == ("records_error", {"call": "d", "path": str(tmp_path / "old.jsonl"),
                                            "error": "DatabaseError: file is not a database"})


def test_writer_adds_the_newer_columns_to_a_table_of_an_older_version(tmp_path: Path):
    old = sqlite3.connect(tmp_path / "calls.db")
    old.execute('CREATE TABLE calls (id INTEGER PRIMARY KEY, start_ts REAL NOT NULL, "call", "start", record TEXT)')
    old.commit()
    old.close()
    logged: list[object] = []
    RecordWriter(tmp_path / "calls.db", lambda name, **f: logged.append((name, f))).write(
        call_record(_end("a", rtp={"rx_loss_pct": 0.0, "tx_loss_pct": 0.0, "rtt_ms": 1.0, "mos": 4.41}),
                    1_750_000_000.0, "<sip:bob@pbx>", "100", "echo", {}, PRICES))
    db = sqlite3.connect(tmp_path / "calls.db")
    assert not logged and db.execute("SELECT call, caller_number, mos FROM calls").fetchall() == [("a", "bob", 4.41)]


def test_hangup_side_names_who_ended_the_call():
    assert [hangup_side(r) for r in ("remote_200", "agent", "done", "rtp_timeout", "caller_silence", "shutdown",
                                     "transferred", "transfer:sip:op@pbx")] == [
        "caller", "agent", "agent", "gateway", "gateway", "gateway", "transfer", "transfer"]


def _records_db(tmp_path: Path) -> Path:
    path = tmp_path / "calls.db"
    w = RecordWriter(path, lambda name, **f: None)
    for rec in _records(tmp_path):
        w.write(rec)
    return path


def _records(tmp_path: Path) -> list[dict[str, object]]:
    return [
        call_record(_end("old", duration_s=30.0, reason="agent"), 1_750_000_000.0, "<sip:bob@pbx>", "200", "echo",
                    {}, PRICES),
        call_record(_end("new", rtp={"mos": 4.27}), 1_750_000_600.0, "\"Alice\" <sip:alice@pbx>", "100", "cascaded",
                    {"tts_chars": 100}, PRICES),
        call_record(_end("mid", duration_s=3600.0, turns=[]), 1_750_000_300.0, "<sip:carol@pbx>", "300",
                    "openai_realtime", {"openai_realtime_out_s": 60.0}, PRICES),
    ]


def _records_file(tmp_path: Path) -> Path:
    """Records as an older version wrote them: JSON lines, the last one torn."""
    path = tmp_path / "calls.jsonl"
    lines = _records(tmp_path)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"call": "torn", "sta')
    return path


def test_read_records_skips_a_torn_line_with_its_line_number(tmp_path: Path):
    records, bad = read_records(_records_file(tmp_path))
    assert [r["call"] for r in records] == ["old", "new", "mid"]
    assert bad == [f"{tmp_path}/calls.jsonl:4: not JSON (Unterminated string starting at)"]


def test_calls_lists_newest_first_with_totals(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = _records_file(tmp_path)
    assert main(["calls", "--records", str(path)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["start", "caller", "->", "called", "agent", "duration", "reason", "backends", "cost",
                                "turn", "p50/p95", "ms", "MOS"]
    assert [ln.split()[2:5] for ln in lines[1:4]] == [["alice", "->", "100"], ["carol", "->", "300"],
                                                      ["bob", "->", "200"]]
    assert lines[1].split()[5:] == ["assistant", "1:30", "remote_200", "cascaded", "1", "0.1300", "500/500", "4.27"]
    assert lines[2].split()[5:] == ["assistant", "1:00:00", "remote_200", "openai_realtime", "1.4400", "-/-", "-"]
    assert lines[4] == "3 calls, 62.0 min, cost 1.5800 EUR, 0.0255 EUR/min"
    assert "skipped" in err and "calls.jsonl:4" in err
    assert main(["calls", "--records", str(path), "--last", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["call"] for c in data["calls"]] == ["new"]
    assert data["totals"] == {"calls": 1, "minutes": 1.5, "cost": 0.13, "currency": "EUR", "cost_per_min": 0.086667}


def test_calls_from_the_database_list_the_same_and_export_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["calls", "--records", str(_records_file(tmp_path))]) == 0
    from_jsonl = capsys.readouterr().out
    db = _records_db(tmp_path)
    assert main(["calls", "--records", str(db), "--csv", str(tmp_path / "cdr.csv")]) == 0
    out, err = capsys.readouterr()
    assert out == from_jsonl and err == ""
    rows = list(csv.DictReader((tmp_path / "cdr.csv").open()))
    assert [(r["call"], r["caller_number"], r["called"], r["duration_s"], r["cost"], r["turn_p95_ms"],
             r["hangup_side"]) for r in rows] == [
        ("new", "alice", "100", "90.0", "0.13", "500.0", "caller"),
        ("mid", "carol", "300", "3600.0", "1.44", "", "caller"),
        ("old", "bob", "200", "30.0", "0.01", "500.0", "agent")]
    assert main(["calls", "--records", str(db), "--last", "1", "--csv", "-"]) == 0
    [row] = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert row["call"] == "new" and row["backends"] == "cascaded:1"
    assert main(["calls", "--records", str(db), "--csv", str(tmp_path / "no/such/dir.csv")]) == 1
    assert capsys.readouterr().err == (f"voicegate calls: cannot write {tmp_path}/no/such/dir.csv: "
                                       "No such file or directory\n")


def test_calls_reads_the_path_from_the_config_and_names_a_missing_file(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]):
    cfg = tmp_path / "vg.yaml"
    cfg.write_text("agents: {e: {type: echo}}\nroutes: [{match: '*', agent: e}]\nrecords: {path: nowhere.jsonl}\n")
    assert main(["calls", "--config", str(cfg)]) == 1
    assert capsys.readouterr().err == (f"voicegate calls: cannot read {tmp_path}/nowhere.jsonl (records.path of "
                                       f"{cfg}): No such file or directory\n")
    (tmp_path / "nowhere.jsonl").write_text("")
    assert main(["calls", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out == f"no calls recorded in {tmp_path}/nowhere.jsonl\n"
    assert table([]) == ["start  caller -> called  agent  duration  reason  backends  cost  turn p50/p95 ms  MOS",
                         "0 calls, 0.0 min, cost 0.0000, -/min"]


class _Client:
    """Stands in for LlmClient: streams fixed deltas, or fails."""

    def __init__(self, *deltas: object, fail: bool = False) -> None:
        self.deltas = deltas
        self.fail = fail

    async def stream(self, messages, tools):
        if self.fail:
            raise LlmError("LLM endpoint http://x: HTTP 500")
        for d in self.deltas:
            yield d

    async def aclose(self) -> None:
        return None


def _reply(client: _Client) -> dict[str, float]:
    brain = LlmBrain(client, "Be brief.", "Hi.", "One moment.", 5.0, "Sorry.")  # type: ignore[arg-type]
    meter = Meter()
    brain.meter = meter.add

    async def run() -> None:
        async for _ in brain.respond(UserTurn("What time is it?", "en", 0.9)):
            pass

    asyncio.run(run())
    return meter.usage


def test_llm_brain_reports_the_endpoints_token_counts_or_characters():
    assert _reply(_Client(TextDelta("It is noon."), Done("stop", Usage(321, 5)))) == {
        "llm_in_tokens": 321, "llm_out_tokens": 5}
    used = _reply(_Client(TextDelta("It is noon."), ToolCall("c1", "end_call", {}), Done("stop")))
    assert used["llm_out_chars"] == len("It is noon.") + len("end_call") + len("{}")
    assert 500 < used["llm_in_chars"] < 1600  # the prompt, the question and the five call-action schemas (1320)
    assert _reply(_Client(fail=True)) == {}  # a request that failed before any output costs nothing


def test_llm_client_asks_for_usage_and_reads_it_from_the_last_chunk():
    usage = json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [],
                        "usage": {"prompt_tokens": 42, "completion_tokens": 3, "total_tokens": 45}})

    async def run(url: str) -> list[object]:
        async with LlmClient(LlmConfig(url, "m", first_token_timeout_s=2.0, total_timeout_s=5.0)) as client:
            stream = client.stream([{"role": "user", "content": "hi"}])
            async with contextlib.aclosing(stream):
                return [e async for e in stream]

    with LlmServer() as server:
        server.script(Reply([chunk({"content": "Hi."}), chunk({}, "stop"), usage, "[DONE]"]))
        events = asyncio.run(run(server.base_url))
        assert server.requests[0].body["stream_options"] == {"include_usage": True}
    assert events == [TextDelta("Hi."), Done("stop", Usage(42, 3))]
