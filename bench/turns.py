"""`make bench`, turn latency of the agent types besides the cascade (bench/cascaded.py has its rows), measured on
the wire by `voicegate simulate` (the caller's frame clock):

- scripted: the demo IVR's key routes. The caller waits for the menu to end, presses a key (RFC 4733) and the
  simulator's `dtmf` step measures `reply_ms`, keys sent -> the agent's first audio: key 2 (a prompt rendered
  during the call, "The time here is ..."), then key 3 (a prompt rendered before the call was answered).
- hybrid: the hotel cascade with the local OpenAI Realtime server (tests/servers/) as its S2S side. A routine
  question stays on the cascade; a complaint moves the call to S2S, which answers at once. `expect_speech` measures
  `latency_ms`, end of the caller's words -> the agent's first audio, and checks who answered by the words. The
  local server has no model delay: the S2S row is what the gateway adds (commit wait, handover), not a model's time.
- S2S agents alone: an OpenAI Realtime agent and a Gemini Live agent (their defaults: the server's `server_vad` ends
  an OpenAI turn after `silence_duration_ms`, the gateway ends a Gemini turn with `activityEnd` after `turn_end_ms`),
  each against its local protocol server (tests/servers/), which has no model: it answers the end of a turn at once
  with piper speech. `expect_speech` measures `latency_ms` as for the hybrid. Beside it, the server's own part,
  measured at the server: OpenAI, its VAD's silence wait plus response start -> first audio delta; Gemini,
  `activityEnd` -> first audio chunk. The rest is the gateway's (media path both ways, and for Gemini its turn end).

BENCH_TURN_CALLS calls per agent (default 10). Prints a table and writes bench/results/turns.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.run import pct
from tests import audio
from tests.integration.peers import ROOT, VENV_BIN, Gateway, free_port, gateway_config, rtp_range, start_gateway
from tests.servers.gemini_live import GeminiLiveServer
from tests.servers.openai_realtime import RealtimeServer

RESULTS = ROOT / "bench" / "results"
KEY_ENV = "VG_BENCH_TURNS_KEY"
QUESTION = "When are you open today?"
COMPLAINT = "I want to speak to someone about a complaint."
S2S_REPLY = "Sure. I can help you with that."
"""The local server's default reply: the words that show S2S answered the complaint."""
S2S_TARGET_MS = 300.0
"""Issue #6's target for the gateway's side of an S2S turn."""


def _config(port: int, rt: RealtimeServer, gem: GeminiLiveServer) -> str:
    cfg = yaml.safe_load(gateway_config(port))
    cfg["agents"]["rt"] = {"type": "openai_realtime", "url": rt.url, "api_key_env": KEY_ENV, "audio_format": "pcmu"}
    cfg["agents"]["hybrid"] = {"type": "hybrid", "cascade": "assistant", "s2s": "rt"}
    cfg["agents"]["gem"] = {"type": "gemini_live", "url": gem.url, "api_key_env": KEY_ENV,
                            "model": "models/bench-live", "greeting": "Greet the caller."}
    cfg["routes"] = [{"match": n, "agent": n} for n in ("demo", "hybrid", "rt", "gem")]
    return yaml.safe_dump(cfg)


def _line(tmp: Path, name: str, text: str) -> str:
    """The caller's words as a WAV without leading or trailing silence (piper, -20 dBFS), as bench/cascaded.py."""
    return str(audio.write_wav(tmp / f"{name}.wav", audio.scale_to_db(audio.trim(audio.piper(text)), -20.0)))


def _scripts(tmp: Path) -> dict[str, Path]:
    keys = {"name": "scripted key routes", "codecs": ["PCMU"], "steps": [
        {"wait_speech": {"timeout_s": 10}},
        {"wait_silence": {"min_s": 1.5, "timeout_s": 30}},  # greeting and menu said: the menu collects a key
        {"dtmf": "2", "expect_reply_ms": 3000},
        {"wait_silence": {"min_s": 1.5, "timeout_s": 30}},  # the time, then the menu again
        {"dtmf": "3", "expect_reply_ms": 3000},
        {"wait": 1},
        {"hangup": {}},
    ]}
    hybrid = {"name": "hybrid turns", "codecs": ["PCMU"], "steps": [
        {"wait_speech": {"timeout_s": 10}},
        {"wait_silence": {"min_s": 1.0, "timeout_s": 20}},
        {"play": _line(tmp, "question", QUESTION)},
        {"expect_speech": {"contains": ["open"], "timeout_s": 15}},
        {"wait_silence": {"min_s": 1.0, "timeout_s": 20}},
        {"play": _line(tmp, "complaint", COMPLAINT)},
        {"expect_speech": {"contains": ["help"], "timeout_s": 15}},
        {"hangup": {}},
    ]}
    s2s = {name: {"name": f"{name} turn", "codecs": ["PCMU"], "steps": [
        {"wait_speech": {"timeout_s": 10}},
        {"wait_silence": {"min_s": 1.0, "timeout_s": 20}},  # the greeting
        {"play": _line(tmp, "question", QUESTION)},
        {"expect_speech": {"contains": [word], "timeout_s": 15}},
        {"hangup": {}},
    ]} for name, word in (("rt", "help"), ("gem", "heard"))}
    out = {}
    for name, doc in (("scripted", keys), ("hybrid", hybrid), *s2s.items()):
        out[name] = tmp / f"{name}.yaml"
        out[name].write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def _simulate(gw: Gateway, script: Path, user: str, calls: int, tmp: Path) -> list[dict[str, Any]]:
    report = tmp / f"{user}.json"
    subprocess.run([str(VENV_BIN / "voicegate"), "simulate", str(script), "--target",
                    f"sip:{user}@127.0.0.1:{gw.port}", "--calls", str(calls), "--concurrency", "1", "--json",
                    str(report), "--rtp-port", str(rtp_range(100)[0])],
                   cwd=ROOT, capture_output=True, timeout=90 * calls, check=False)
    return list(json.loads(report.read_text()))


def _metric(reports: list[dict[str, Any]], index: int, key: str) -> tuple[list[float], int]:
    """The `key` of step `index` over the calls where that step passed; and how many calls it failed."""
    ok = [r["steps"][index] for r in reports if len(r["steps"]) > index and r["steps"][index]["ok"]]
    return [float(s["metrics"][key]) for s in ok], len(reports) - len(ok)


def _row(xs: list[float], failed: int) -> dict[str, Any]:
    return {"turns": len(xs), "failed": failed, "p50_ms": pct(xs, 50), "p95_ms": pct(xs, 95),
            "max_ms": round(max(xs), 1) if xs else float("nan"), "all_ms": xs}


def _rt_server_ms(rt: RealtimeServer) -> tuple[list[float], list[float]]:
    """Per response the server's VAD started: (arrival of the audio where its VAD put the end of speech -> the
    response started, i.e. its silence wait), and (response started -> its first audio delta sent)."""
    arrivals: dict[int, list[tuple[float, float]]] = {}  # conn -> (arrival time, audio ms received by then)
    for ev in rt.received:
        if ev.type == "input_audio_buffer.append":
            per_ms = 8 if rt.input_rates.get(ev.conn) == 8000 else rt.input_rates.get(ev.conn, 24000) * 2 / 1000
            got = arrivals.setdefault(ev.conn, [])
            got.append((ev.t, (got[-1][1] if got else 0.0) + float(ev.event["audio"]) / per_ms))
    wait, start = [], []
    for r in rt.responses:
        if r.by != "vad" or r.first_delta_t is None:
            continue
        ends = [next(t for t, ms in arrivals[r.conn] if ms >= end) for c, kind, end in rt.speech
                if c == r.conn and kind == "speech_stopped" and any(ms >= end for _, ms in arrivals[r.conn])]
        ends = [t for t in ends if t <= r.created_t]
        if ends:
            wait.append(round((r.created_t - ends[-1]) * 1000, 1))
        start.append(round((r.first_delta_t - r.created_t) * 1000, 1))
    return wait, start


def main() -> int:
    calls = int(os.environ.get("BENCH_TURN_CALLS", "10"))
    os.environ[KEY_ENV] = "bench-key"
    with (tempfile.TemporaryDirectory() as d, RealtimeServer(default_reply=S2S_REPLY) as rt,
          GeminiLiveServer("bench-key") as gem):
        tmp = Path(d)
        port = free_port()
        gw = start_gateway(_config(port, rt, gem), tmp, port)
        try:
            scripts = _scripts(tmp)
            print(f"scripted agent, key routes, {calls} calls ...", flush=True)
            keys = _simulate(gw, scripts["scripted"], "demo", calls, tmp)
            print(f"hybrid agent, a cascade turn and an S2S turn, {calls} calls ...", flush=True)
            rt.reset()
            hybrid = _simulate(gw, scripts["hybrid"], "hybrid", calls, tmp)
            time.sleep(1.0)
            escalations = [t for e in gw.events("call_end") if e.get("agent") == "hybrid" for t in e.get("turns", [])
                           if t.get("escalation")]
            print(f"OpenAI Realtime agent, {calls} calls ...", flush=True)
            rt.reset()
            rt_reports = _simulate(gw, scripts["rt"], "rt", calls, tmp)
            rt_wait, rt_start = _rt_server_ms(rt)
            print(f"Gemini Live agent, {calls} calls ...", flush=True)
            gem_reports = _simulate(gw, scripts["gem"], "gem", calls, tmp)
            gem_first = [ms for sess in gem.sessions for ms in sess.first_audio_after_turn_ms]
            time.sleep(1.0)
            s2s_turns = {agent: [t for e in gw.events("call_end") if e.get("agent") == agent
                                 for t in e.get("turns", []) if t.get("overhead_ms") is not None]
                         for agent in ("rt", "gem")}
        finally:
            gw.stop()
    res: dict[str, Any] = {
        "scripted_key_rendered_in_call": _row(*_metric(keys, 2, "reply_ms")),
        "scripted_key_prerendered": _row(*_metric(keys, 4, "reply_ms")),
        "hybrid_cascade": _row(*_metric(hybrid, 3, "latency_ms")),
        "hybrid_s2s": _row(*_metric(hybrid, 6, "latency_ms")),
        "hybrid_handover_p50_ms": pct([float(t["handover_ms"]) for t in escalations], 50),
        "escalations": len(escalations), "s2s_responses": len(rt.responses), "calls": calls,
        "openai_realtime": _row(*_metric(rt_reports, 3, "latency_ms")),
        "openai_server_vad_wait_ms": rt_wait, "openai_server_first_delta_ms": rt_start,
        "gemini_live": _row(*_metric(gem_reports, 3, "latency_ms")),
        "gemini_server_first_chunk_ms": gem_first,
        "s2s_overhead_ms": {a: [float(t["overhead_ms"]) for t in ts] for a, ts in s2s_turns.items()},
    }
    server = {"openai_realtime": pct(rt_wait, 50) + pct(rt_start, 50), "gemini_live": pct(gem_first, 50)}
    for key in server:
        res[key]["server_p50_ms"] = round(server[key], 1)
        res[key]["gateway_p50_ms"] = round(res[key]["p50_ms"] - server[key], 1)
        res[key]["gateway_p95_ms"] = round(res[key]["p95_ms"] - server[key], 1)
    rows: list[tuple[str, dict[str, Any], str]] = [
        ("scripted, key 2 -> reply (ms)", res["scripted_key_rendered_in_call"],
         "keys sent -> first agent audio; 'The time here is ...' rendered by piper during the call"),
        ("scripted, key 3 -> reply (ms)", res["scripted_key_prerendered"], "a prompt rendered before the call"),
        ("hybrid, routine turn on the cascade (ms)", res["hybrid_cascade"],
         "caller's words end -> first agent audio; 'When are you open today?'"),
        ("hybrid, turn moved to S2S (ms)", res["hybrid_s2s"],
         f"the complaint; local Realtime server, no model delay; {res['escalations']} escalations, "
         f"handover p50 {res['hybrid_handover_p50_ms']} ms"),
    ]
    for key, label, own in (
            ("openai_realtime", "OpenAI Realtime", f"its server_vad waits out the silence "
             f"(p50 {pct(rt_wait, 50)} ms) and sends the first delta {pct(rt_start, 50)} ms after"),
            ("gemini_live", "Gemini Live", f"activityEnd -> first chunk p50 {pct(gem_first, 50)} ms; the gateway's "
             "turn_end_ms wait is on the gateway's side")):
        r = res[key]
        rows.append((f"{label} agent, caller's words end -> reply (ms)", r,
                     f"local server's own part {r['server_p50_ms']} ms ({own}); gateway's part p50 / p95 "
                     f"{r['gateway_p50_ms']} / {r['gateway_p95_ms']} ms against issue #6's {S2S_TARGET_MS:.0f}"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'metric':<{width}}  {'p50/p95/max':>20}  note")
    for name, r, note in rows:
        value = f"{r['p50_ms']}/{r['p95_ms']}/{r['max_ms']}"
        print(f"{name:<{width}}  {value:>20}  {r['turns']} turns, {r['failed']} failed; {note}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"bench": "turns", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}, **res}
    (RESULTS / "turns.json").write_text(json.dumps(out, indent=2, default=float))
    print(f"\nwrote {RESULTS / 'turns.json'}")
    return 0 if all(r["failed"] == 0 for _, r, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
