"""`make bench`, speech-to-speech part: what the gateway adds between an S2S server and the caller, and what calls cost.

- overhead on the wire at zero model delay: the local OpenAI Realtime and Gemini Live protocol servers
  (tests/servers/) answer at once; per call, the gateway's first audible RTP packet (tcpdump on loopback) minus the
  server's send time of its first audio chunk (wall clocks of one machine), less the reply audio's own leading
  silence: the issue's goal. Beside it, the same at the caller (its first audible frame), which adds the caller's
  own jitter buffer and bridge (pjsua2 defaults), as a phone would.
- barge-in -> `response.cancel`: the caller talks over a long OpenAI Realtime greeting; from the gateway's barge-in
  decision (its `barge_in` log line) and from the caller's first sent speech frame to the server's receipt of
  `response.cancel`.
- cost per minute of one fixed call set (two routine questions, one complaint) answered all-cascaded, all-S2S and
  hybrid, from the call records priced with the example list prices in voicegate.yaml.
Prints a table and writes bench/results/s2s.json.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.run import pct
from media.frames import FRAME_BYTES, level_dbfs
from media.g711 import ulaw_decode
from media.resample import resample
from telephony.records import read_records
from telephony.simulator.phone import AUDIBLE_DBFS
from tests import audio
from tests.integration.capture import Capture, Packet
from tests.integration.peers import ROOT, Gateway, call, free_port, gateway_config, start_gateway
from tests.servers.gemini_live import GeminiLiveServer
from tests.servers.openai_realtime import RealtimeServer, render, speak

RESULTS = ROOT / "bench" / "results"
KEY_ENV = "VG_BENCH_S2S_KEY"
KEY = "bench-key"
LONG = ("Thank you for calling the harbour hotel. Every room has a view of the water, breakfast is served on the "
        "terrace from seven, and the restaurant opens at noon with fresh fish every day.")
CALL_SET = ("When are you open?", "What time do you close?", "I want to make a complaint about my room.")
PRICES = {  # the illustrative list prices of voicegate.yaml's comments
    "sip_per_min": 0.004, "asr_per_min": 0.006, "tts_per_char": 0.000015,
    "llm": {"in_per_1k_tokens": 0.00015, "out_per_1k_tokens": 0.0006},
    "s2s": {"openai_realtime": {"in_per_min": 0.02, "out_per_min": 0.08},
            "gemini_live": {"in_per_min": 0.006, "out_per_min": 0.023}},
}


def _config(port: int, rt: RealtimeServer, gem: GeminiLiveServer) -> str:
    cfg = yaml.safe_load(gateway_config(port))
    cfg["agents"].update({
        "rt": {"type": "openai_realtime", "url": rt.url, "api_key_env": KEY_ENV, "audio_format": "pcmu",
               "turn_owner": "gateway"},
        "gem": {"type": "gemini_live", "url": gem.url, "api_key_env": KEY_ENV, "model": "models/bench-live",
                "greeting": "Greet the caller."},
        "hy": {"type": "hybrid", "cascade": "assistant", "s2s": "rt"},
    })
    cfg["routes"] = [{"match": n, "agent": n} for n in ("rt", "gem", "hy", "assistant")]
    cfg["prices"] = PRICES
    return yaml.safe_dump(cfg)


def _uri(gw: Gateway, user: str) -> str:
    return f"sip:{user}@127.0.0.1:{gw.port}"


def _lead_s(pcm24: bytes) -> float:
    """The reply's own leading silence: where its first 20 ms frame reaches the caller's audible level."""
    pcm = resample(pcm24, 24000)
    for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
        if level_dbfs(pcm[i : i + FRAME_BYTES]) > AUDIBLE_DBFS:
            return i / FRAME_BYTES * 0.02
    return 0.0


def _first_audible_rtp(packets: list[Packet], ports: range) -> float | None:
    """Wall time of the first RTP packet the gateway sent (from its RTP `ports`) whose PCMU payload is audible."""
    for p in packets:
        if p.src[1] in ports and level_dbfs(resample(ulaw_decode(p.payload), 8000)) > AUDIBLE_DBFS:
            return p.t
    return None


def overhead(gw: Gateway, rt: RealtimeServer, gem: GeminiLiveServer, calls: int, tmp: Path,
             rtp_ports: range) -> dict[str, Any]:
    """Per backend: on the wire (tcpdump on loopback: the gateway's first audible RTP packet), and at the caller
    (its first audible frame, after its own jitter buffer and bridge), each minus the server's send time of its
    first audio chunk and the reply's own leading silence."""
    out: dict[str, Any] = {}
    for name in ("rt", "gem"):
        wire_ms, caller_ms = [], []
        for _ in range(calls):
            rt.reset()
            sent_before = sum(len(s.first_chunk_wall) for s in gem.sessions)
            cap = Capture(tmp / "s2s.pcap", "lo", gw.port)
            try:
                res = call(_uri(gw, name), "--duration", "2.5", timeout=30)
            finally:
                on_wire = _first_audible_rtp(cap.stop(), rtp_ports)
            if name == "rt":
                firsts = [(r.first_delta_t, render(r.act.text)) for r in rt.responses if r.first_delta_t is not None]
            else:
                sent = [(t, text) for s in gem.sessions for t, text in zip(s.first_chunk_wall, s.replies, strict=False)]
                firsts = [(t, gem.render(text)) for t, text in sent[sent_before:]]
            if not firsts:
                continue
            t, pcm = firsts[0]
            start = t + _lead_s(pcm)
            if on_wire is not None:
                wire_ms.append(round((on_wire - start) * 1000, 1))
            if res.get("agent_audio_wall"):
                caller_ms.append(round((res["agent_audio_wall"] - start) * 1000, 1))
        out[name] = {"calls": calls, "measured": len(wire_ms), "p50_ms": pct(wire_ms, 50), "p95_ms": pct(wire_ms, 95),
                     "all_ms": wire_ms, "caller_p50_ms": pct(caller_ms, 50), "caller_p95_ms": pct(caller_ms, 95),
                     "caller_all_ms": caller_ms}
        print(f"  {name}: on the wire {out[name]['p50_ms']}/{out[name]['p95_ms']} ms, at the caller "
              f"{out[name]['caller_p50_ms']}/{out[name]['caller_p95_ms']} ms", flush=True)
    return out


def barge_to_cancel(gw: Gateway, rt: RealtimeServer, tmp: Path, calls: int) -> dict[str, Any]:
    clip = audio.scale_to_db(audio.telephone_band(audio.trim(audio.espeak(audio.CALLER_SENTENCE))), -20.0)
    wav = audio.write_wav(tmp / "barge.wav", clip)
    from_gw, from_caller = [], []
    for _ in range(calls):
        rt.reset()
        rt.script(speak(LONG))
        res = call(_uri(gw, "rt"), "--play", str(wav), "--speak-at-s", "3.0", "--duration", "6", timeout=30)
        end = gw.wait_event("call_end", 10, call=gw.events("call_incoming")[-1]["call"])
        barges = [e for e in gw.events("barge_in") if e.get("call") == end["call"]]
        if not rt.cancels or not barges:
            continue
        cancel_t = rt.cancels[0][1]
        from_gw.append(round((cancel_t - barges[0]["ts"]) * 1000, 1))
        if res.get("speak_start_wall"):
            from_caller.append(round((cancel_t - res["speak_start_wall"]) * 1000, 1))
    return {"calls": calls, "measured": len(from_gw), "gateway_p50_ms": pct(from_gw, 50),
            "gateway_p95_ms": pct(from_gw, 95), "caller_p50_ms": pct(from_caller, 50),
            "caller_p95_ms": pct(from_caller, 95), "gateway_ms": from_gw, "caller_ms": from_caller}


def _call_set(tmp: Path) -> list[Path]:
    out = []
    for i, q in enumerate(CALL_SET):
        x = np.zeros(16000 * 14, np.float32)
        clip = audio.scale_to_db(audio.trim(audio.piper(q)), -20.0)
        x[16000 * 5 : 16000 * 5 + len(clip)] = clip
        out.append(audio.write_wav(tmp / f"set{i}.wav", x))
    return out


def cost_per_minute(gw: Gateway, rt: RealtimeServer, tmp: Path, records: Path) -> dict[str, Any]:
    wavs = _call_set(tmp)
    out: dict[str, Any] = {}
    for name, label in (("assistant", "cascaded"), ("rt", "s2s"), ("hy", "hybrid")):
        ids = []
        for wav in wavs:
            rt.reset()
            call(_uri(gw, name), "--play", str(wav), "--speak-at-s", "0", "--duration", "14", timeout=40)
            ids.append(gw.wait_event("call_end", 15, call=gw.events("call_incoming")[-1]["call"])["call"])
        time.sleep(0.5)
        recs = [r for r in read_records(records)[0] if r["call"] in ids]
        minutes = sum(float(r["duration_s"]) for r in recs) / 60
        total = sum(float(r["cost"]["total"]) for r in recs)
        backends = sorted({b for r in recs for b in r["backends"]})
        out[label] = {"calls": len(recs), "minutes": round(minutes, 3), "usd": round(total, 5),
                      "usd_per_min": round(total / minutes, 5) if minutes else None, "backends": backends}
        print(f"  {label}: {out[label]}", flush=True)
    return out


def main() -> int:
    calls = int(os.environ.get("BENCH_TRIALS", "20"))
    os.environ[KEY_ENV] = KEY
    with tempfile.TemporaryDirectory() as d, RealtimeServer() as rt, GeminiLiveServer(KEY) as gem:
        tmp = Path(d)
        port = free_port()
        config = _config(port, rt, gem)
        rtp = yaml.safe_load(config)["rtp"]
        gw = start_gateway(config, tmp, port)
        try:
            print("S2S overhead on the wire at zero model delay ...", flush=True)
            over = overhead(gw, rt, gem, calls, tmp, range(rtp["port_min"], rtp["port_max"] + 1))
            print("barge-in -> response.cancel ...", flush=True)
            barge = barge_to_cancel(gw, rt, tmp, calls)
            print("cost per minute of one call set ...", flush=True)
            cost = cost_per_minute(gw, rt, tmp, tmp / "records" / "calls.db")
        finally:
            gw.stop()
    rows = [
        ("S2S overhead on the wire, OpenAI p50 / p95 (ms)", f"{over['rt']['p50_ms']}/{over['rt']['p95_ms']}",
         f"{over['rt']['measured']} calls; server's first audio sent -> gateway's first audible RTP; goal p95 <= 40"),
        ("S2S overhead on the wire, Gemini p50 / p95 (ms)", f"{over['gem']['p50_ms']}/{over['gem']['p95_ms']}",
         f"{over['gem']['measured']} calls"),
        ("at the caller, OpenAI p50 / p95 (ms)", f"{over['rt']['caller_p50_ms']}/{over['rt']['caller_p95_ms']}",
         "after the caller's own jitter buffer and bridge"),
        ("at the caller, Gemini p50 / p95 (ms)", f"{over['gem']['caller_p50_ms']}/{over['gem']['caller_p95_ms']}",
         ""),
        ("barge-in -> response.cancel p50 / p95 (ms)", f"{barge['gateway_p50_ms']}/{barge['gateway_p95_ms']}",
         f"{barge['measured']} calls, from the gateway's decision (log ms resolution); goal p95 <= 60"),
        ("caller onset -> response.cancel p50 / p95 (ms)", f"{barge['caller_p50_ms']}/{barge['caller_p95_ms']}",
         "from the caller's first sent speech frame"),
    ]
    for label, c in cost.items():
        rows.append((f"cost per minute, {label} (USD)", c["usd_per_min"],
                     f"{c['calls']} calls, {c['minutes']} min, backends {', '.join(c['backends'])}"))
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'metric':<{width}}  {'value':>12}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value!s:>12}  {note}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"bench": "s2s", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count()}, "overhead": over, "barge_in_cancel": barge, "cost": cost,
           "prices": PRICES}
    (RESULTS / "s2s.json").write_text(json.dumps(out, indent=2))
    print(f"\nwrote {RESULTS / 's2s.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
