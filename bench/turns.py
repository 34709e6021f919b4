"""`make bench`, turn latency of the agent types besides the cascade (bench/cascaded.py has its rows), measured on
the wire by `voicegate simulate` (the caller's frame clock):

- scripted: the demo IVR's key routes. The caller waits for the menu to end, presses a key (RFC 4733) and the
  simulator's `dtmf` step measures `reply_ms`, keys sent -> the agent's first audio: key 2 (a prompt rendered
  during the call, "The time here is ..."), then key 3 (a prompt rendered before the call was answered).
- hybrid: the hotel cascade with the local OpenAI Realtime server (tests/servers/) as its S2S side. A routine
  question stays on the cascade; a complaint moves the call to S2S, which answers at once. `expect_speech` measures
  `latency_ms`, end of the caller's words -> the agent's first audio, and checks who answered by the words. The
  local server has no model delay: the S2S row is what the gateway adds (commit wait, handover), not a model's time.

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
from tests.servers.openai_realtime import RealtimeServer

RESULTS = ROOT / "bench" / "results"
KEY_ENV = "VG_BENCH_TURNS_KEY"
QUESTION = "When are you open today?"
COMPLAINT = "I want to speak to someone about a complaint."
S2S_REPLY = "Sure. I can help you with that."
"""The local server's default reply: the words that show S2S answered the complaint."""


def _config(port: int, rt: RealtimeServer) -> str:
    cfg = yaml.safe_load(gateway_config(port))
    cfg["agents"]["rt"] = {"type": "openai_realtime", "url": rt.url, "api_key_env": KEY_ENV, "audio_format": "pcmu"}
    cfg["agents"]["hybrid"] = {"type": "hybrid", "cascade": "assistant", "s2s": "rt"}
    cfg["routes"] = [{"match": "demo", "agent": "demo"}, {"match": "hybrid", "agent": "hybrid"}]
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
    out = {}
    for name, doc in (("scripted", keys), ("hybrid", hybrid)):
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


def main() -> int:
    calls = int(os.environ.get("BENCH_TURN_CALLS", "10"))
    os.environ[KEY_ENV] = "bench-key"
    with tempfile.TemporaryDirectory() as d, RealtimeServer(default_reply=S2S_REPLY) as rt:
        tmp = Path(d)
        port = free_port()
        gw = start_gateway(_config(port, rt), tmp, port)
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
        finally:
            gw.stop()
    res: dict[str, Any] = {
        "scripted_key_rendered_in_call": _row(*_metric(keys, 2, "reply_ms")),
        "scripted_key_prerendered": _row(*_metric(keys, 4, "reply_ms")),
        "hybrid_cascade": _row(*_metric(hybrid, 3, "latency_ms")),
        "hybrid_s2s": _row(*_metric(hybrid, 6, "latency_ms")),
        "hybrid_handover_p50_ms": pct([float(t["handover_ms"]) for t in escalations], 50),
        "escalations": len(escalations), "s2s_responses": len(rt.responses), "calls": calls,
    }
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
