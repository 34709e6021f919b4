"""`make bench`: calls on loopback through a running voicegate, measured on the caller's side of the wire.

- barge-in reaction: caller speech onset (first frame within 20 dB of the utterance's peak, telephone band) ->
  last agent frame the caller hears, over BENCH_TRIALS calls (default 20);
- false stops: BENCH_TRIALS callers who only return the agent's echo over line noise, and as many who only say a
  backchannel, through `voicegate simulate` (`BENCH_ONLY=false_stops` runs these alone, into false_stops.json);
- echo round trip through voicegate's echo agent vs the same caller looped by `sipp -rtp_echo`, in this run;
- media clock jitter (interval between a call's outbound ticks) with 4 concurrent echo calls;
- the Python frame path's CPU per call-second, replayed without a clock (bench/frame_path.py), against a copy port.
Prints a table with each target of issue #10 (bench/targets.py) and PASS or FAIL, writes
bench/results/foundation.json, and exits 1 when a target was missed.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench import export_clipset, targets
from media.barge_in import DetectorSettings
from telephony.simulator import measure as wire
from telephony.simulator.shaper import LineImpairment
from tests import audio, clipset
from tests.integration.peers import ROOT, VENV_BIN, Gateway, call, free_port, gateway_config, rtp_range, start_gateway

RESULTS = ROOT / "bench" / "results"


def pct(xs: list[float], q: float) -> float:
    """The q-th percentile rounded to 0.1; NaN for no samples (a row that measured nothing says so)."""
    return round(float(np.percentile(np.asarray(xs, dtype=np.float64), q)), 1) if xs else float("nan")


def interrupter_wav(tmp: Path) -> Path:
    """The caller's interruption for the reaction rows: espeak-ng's sentence, telephone band, at -23 dBFS."""
    caller = audio.scale_to_db(audio.telephone_band(audio.trim(audio.espeak(audio.CALLER_SENTENCE))), -23.0)
    return audio.write_wav(tmp / "caller.wav", caller)


def barge_in(gw: Gateway, tmp: Path, trials: int, seed: int) -> dict[str, Any]:
    """`trials` reactions; a caller who began in a pause between the agent's sentences (nothing to stop) does not
    count, and another call is made, up to 2 x `trials` calls. A reaction of 0 ms or less: the agent stopped on the
    caller's first quiet sound, before the onset the issue defines (the first frame within 20 dB of the peak)."""
    rng = random.Random(seed)
    wav = interrupter_wav(tmp)
    reactions: list[float] = []
    silent = 0
    for i in range(2 * trials):
        if len(reactions) == trials:
            break
        after = rng.uniform(1500, 3000)
        r = call(f"sip:long@127.0.0.1:{gw.port}", "--play", str(wav), "--speak-after-agent-ms", f"{after:.0f}",
                 "--duration", f"{after / 1000 + 2.5:.1f}", "--record", str(tmp / "rx.wav"),
                 "--record-sent", str(tmp / "tx.wav"))
        tx, rx = audio.read_wav(tmp / "tx.wav"), audio.read_wav(tmp / "rx.wav")
        reaction = wire.reaction_ms(tx, rx, r["speak_start_frame"])
        if not wire.talking_before(wire.frames_db(rx), wire.caller_onset_frame(tx, r["speak_start_frame"], -40.0)):
            silent += 1
        else:
            reactions.append(reaction)
        print(f"  barge-in call {i + 1}: {reaction:.0f} ms", flush=True)
    return {"n": len(reactions), "agent_silent_at_onset": silent, "p50_ms": pct(reactions, 50),
            "p95_ms": pct(reactions, 95), "all_ms": reactions}


def simulate(gw: Gateway, tmp: Path, name: str, docs: list[dict[str, Any]], seed: int,
             line: LineImpairment | None = None) -> list[dict[str, Any]]:
    """Run `docs` (call scripts) one after another through `voicegate simulate` against `long`, on `line` through
    the simulator's seeded relay (None: a clean loopback line); the per-call JSON reports (failed steps included:
    a false barge-in fails its call's script)."""
    scripts = []
    for i, doc in enumerate(docs):
        path = tmp / f"{name}-{i}.yaml"
        path.write_text(yaml.safe_dump(doc))
        scripts.append(str(path))
    report = tmp / f"{name}.json"
    impair = ["--loss", str(line.loss_pct), "--jitter", str(line.jitter_ms)] if line else []
    proc = subprocess.run([str(VENV_BIN / "voicegate"), "simulate", *scripts, "--target",
                           f"sip:long@127.0.0.1:{gw.port}", "--json", str(report), *impair, "--seed", str(seed),
                           "--rtp-port", str(rtp_range(100)[0])],
                          cwd=ROOT, capture_output=True, text=True, timeout=60 * len(scripts), check=False)
    if not report.exists():  # exit 1 (a step failed) still writes one; no report is the bench's own fault
        raise RuntimeError(f"voicegate simulate wrote no report (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
                           f"\n{proc.stderr[-2000:]}")
    reports: list[dict[str, Any]] = json.loads(report.read_text())
    return reports


IMPAIRED = LineImpairment(loss_pct=1.0, jitter_ms=20.0)
"""The issue's impaired line: 1% loss each way, and 20 ms jitter (each packet delayed 0-40 ms, netem's `delay 20
20`), applied by the simulator's seeded relay."""


def barge_in_impaired(gw: Gateway, tmp: Path, trials: int, seed: int) -> dict[str, Any]:
    """Barge-in reaction through `voicegate simulate` on the IMPAIRED line: one interrupt script per call, the caller
    starting 1.5-3 s into the agent's long message (the step counts `after_ms` from its onset); reactions as in
    `barge_in` (the simulator measures them the same way), with the RTP jitter the simulated phone measured. A
    quarter more calls than `trials` are made, for those that begin in a pause of the agent's."""
    rng = random.Random(seed)
    wav = interrupter_wav(tmp)
    docs = []
    for i in range(trials + trials // 4):
        step = {"interrupt": {"play": str(wav), "after_ms": round(rng.uniform(1500, 3000)), "expect_stop_ms": 1000}}
        docs.append({"name": f"impaired barge-in {i + 1}", "codecs": ["PCMU"],
                     "steps": [{"wait_speech": {"timeout_s": 5}}, step, {"wait": 1}, {"hangup": {}}]})
    reports = simulate(gw, tmp, "impaired", docs, seed, IMPAIRED)
    reactions: list[float] = []
    jitter: list[float] = []
    silent = 0
    for r in reports:
        (step,) = [s for s in r["steps"] if s["name"] == "interrupt"]
        sent, heard = np.asarray(r["sent_db"]), np.asarray(r["heard_db"])
        said = np.nonzero(sent[step["start_frame"] :] > sent.max() - 40.0)[0]
        if not said.size or not wire.talking_before(heard, step["start_frame"] + int(said[0])):
            silent += 1
        else:
            reactions.append(step["metrics"]["reaction_ms"])
        if r["rtp"] and r["rtp"].get("rx_jitter_ms") is not None:
            jitter.append(r["rtp"]["rx_jitter_ms"])
    return {"line": IMPAIRED.describe(), "n": len(reactions), "agent_silent_at_onset": silent,
            "p50_ms": pct(reactions, 50), "p95_ms": pct(reactions, 95), "all_ms": reactions,
            "caller_rx_jitter_p50_ms": pct(jitter, 50)}


def echo_round_trip(gw: Gateway, tmp: Path, trials: int) -> dict[str, Any]:
    speech = audio.scale_to_db(audio.trim(audio.espeak(audio.CALLER_SENTENCE)), -20.0)
    wav = audio.write_wav(tmp / "speech.wav", speech)
    sipp_port = free_port()
    sipp = subprocess.Popen(
        ["sipp", "-sn", "uas", "-rtp_echo", "-i", "127.0.0.1", "-p", str(sipp_port), "-mp", str(rtp_range(4)[0]),
         "-nostdin", "-m", str(trials), "-timeout", "300"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp,
    )
    time.sleep(0.5)
    out: dict[str, list[float]] = {"voicegate": [], "sipp_rtp_echo": []}
    try:
        for _ in range(trials):
            for name, uri in (("voicegate", f"sip:echo@127.0.0.1:{gw.port}"),
                              ("sipp_rtp_echo", f"sip:echo@127.0.0.1:{sipp_port}")):
                call(uri, "--play", str(wav), "--speak-at-s", "0.3", "--duration", "4.5",
                     "--record", str(tmp / "rx.wav"), "--record-sent", str(tmp / "tx.wav"))
                lag, peak = wire.echo_lag(audio.read_wav(tmp / "tx.wav"), audio.read_wav(tmp / "rx.wav"))
                if peak > 0.3:
                    out[name].append(lag)
    finally:
        sipp.kill()
        sipp.wait(5)
    vg, sp = float(np.median(out["voicegate"])), float(np.median(out["sipp_rtp_echo"]))
    return {"voicegate_ms": round(vg, 1), "sipp_rtp_echo_ms": round(sp, 1), "added_ms": round(vg - sp, 1),
            "ratio": round(vg / sp, 2) if sp else None, "n": trials}


ECHO_DELAYS_MS = (20, 100, 250, 500)
ECHO_LOSS_DB = (6, 12, 20)
LINE_NOISE_SNR_DB = 30.0
"""The issue's echo-only caller: the agent's audio returned 20-500 ms late and 6-20 dB down, with line noise 30 dB
under the caller's speech level (the simulator's `noise` step; a caller who says nothing takes P.56's nominal
-26 dBov, so the noise is white at -56 dBFS)."""


def call_ends(gw: Gateway, since: int, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The gateway's `call_end` events after the first `since`, once `count` of them arrived (or `timeout`)."""
    deadline = time.monotonic() + timeout
    while len(gw.events("call_end")) < since + count and time.monotonic() < deadline:
        time.sleep(0.05)
    return gw.events("call_end")[since:]


def wire_false_stops(gw: Gateway, tmp: Path, calls: int, seed: int,
                     line: LineImpairment | None = None) -> dict[str, Any]:
    """Callers who only return the agent's echo over line noise from the answer on (LINE_NOISE_SNR_DB; delays and
    losses spread over ECHO_DELAYS_MS x ECHO_LOSS_DB), then callers who only say a backchannel 1.5-3 s into the
    agent's talk, on `line` (None: clean). Paused and stopped are the gateway's own events per call
    (`barge_in_paused`, `call_end.barge_ins`, `call_end.paused_ms`); `echo_false_barge_ins_heard` counts the agent's
    silences over 450 ms that the echo-only callers heard, `backchannel_pause_heard_p50_ms` the backchannel callers'
    longest silence of the agent (the simulator's `expect_no_barge_in` and `backchannel` steps)."""
    rng = random.Random(seed)
    docs = []
    for i in range(calls):
        delay, loss = ECHO_DELAYS_MS[i % len(ECHO_DELAYS_MS)], ECHO_LOSS_DB[i % len(ECHO_LOSS_DB)]
        docs.append({"name": f"echo-only {i + 1} ({delay} ms, -{loss} dB)", "codecs": ["PCMU"],
                     "steps": [{"echo": {"db": -loss, "delay_ms": delay}},
                               {"noise": {"snr_db": LINE_NOISE_SNR_DB, "seed": seed * 1000 + i}},
                               {"wait_speech": {"timeout_s": 5}}, {"expect_no_barge_in": {"for_s": 4.5}},
                               {"hangup": {}}]})
    words = [str(audio.write_wav(tmp / f"bc-{k}.wav", w)) for k, w in enumerate(clipset.backchannels())]
    bc_docs = [{"name": f"backchannel {i + 1}", "codecs": ["PCMU"],
                "steps": [{"wait_speech": {"timeout_s": 5}},
                          {"backchannel": {"play": words[i % len(words)], "after_ms": round(rng.uniform(1500, 3000)),
                                           "expect_continue_s": 1.5}},
                          {"wait": 0.5}, {"hangup": {}}]} for i in range(calls)]
    tag = "-impaired" if line else ""
    before = len(gw.events("call_end"))
    echo = simulate(gw, tmp, f"echo-only{tag}", docs, seed, line)
    for r in echo:
        print(f"  {r['script']}: {r['duration_s']:.1f} s, the caller heard {r['false_barge_ins']} false barge-ins",
              flush=True)
    echo_ends = call_ends(gw, before, calls)
    paused_calls = {e["call"] for e in gw.events("barge_in_paused")}
    noise = [s["metrics"]["noise_dbfs"] for r in echo for s in r["steps"] if s["name"] == "noise"]
    before = len(gw.events("call_end"))
    bc = simulate(gw, tmp, f"backchannel{tag}", bc_docs, seed, line)
    heard = [s["metrics"]["pause_ms"] for r in bc for s in r["steps"]
             if s["name"] == "backchannel" and "pause_ms" in s["metrics"]]
    for r in bc:
        print(f"  {r['script']}: {'passed' if r['passed'] else 'failed'}", flush=True)
    bc_ends = call_ends(gw, before, calls)
    paused = [p for e in bc_ends for p in e.get("paused_ms", [])]
    return {
        "line": line.describe() if line else "clean",
        "echo_calls": len(echo_ends),
        "echo_calls_paused": sum(e["call"] in paused_calls for e in echo_ends),
        "echo_calls_stopped": sum(e["barge_ins"] > 0 for e in echo_ends),
        "echo_false_barge_ins_heard": sum(r["false_barge_ins"] or 0 for r in echo),
        "echo_delays_ms": list(ECHO_DELAYS_MS), "echo_loss_db": list(ECHO_LOSS_DB),
        "line_noise_dbfs": sorted(set(noise)),
        "backchannel_calls": len(bc_ends),
        "backchannel_calls_stopped": sum(e["barge_ins"] > 0 for e in bc_ends),
        "backchannel_pause_p50_ms": pct(paused, 50) if paused else 0.0,
        "backchannel_pause_heard_p50_ms": pct(heard, 50),
    }


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _four_calls(uri: str, seconds: float) -> None:
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: call(uri, "--duration", str(seconds)), range(4)))


def cpu_per_call_second(gw: Gateway, tmp: Path, seconds: float = 10.0, rounds: int = 3) -> dict[str, Any]:
    """CPU of the answering process per echo call-second, 4 calls at once: voicegate vs a bare pjsua2 bridge echo,
    `rounds` interleaved runs of each (one 10 s sample moved the ratio between 1.49x and 2.27x); the medians."""
    port = free_port()
    bridge = subprocess.Popen([sys.executable, "-m", "bench.bridge_echo", str(port), str(rtp_range(40)[0])],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        assert bridge.stdout is not None
        for line in bridge.stdout:  # pjlib prints its start-up lines before ours
            if line.strip() == "ready":
                break
        runs: dict[str, list[float]] = {"pjsua2_bridge_echo": [], "voicegate_echo": []}
        for _ in range(rounds):
            for name, pid, uri in (("pjsua2_bridge_echo", bridge.pid, f"sip:echo@127.0.0.1:{port}"),
                                   ("voicegate_echo", gw.proc.pid, f"sip:echo@127.0.0.1:{gw.port}")):
                c0 = _cpu_s(pid)
                _four_calls(uri, seconds)
                runs[name].append(round((_cpu_s(pid) - c0) * 1000 / (4 * seconds), 2))
        out: dict[str, Any] = {f"{name}_ms": float(np.median(v)) for name, v in runs.items()}
        out["runs_ms"] = runs
        out["ratio"] = round(out["voicegate_echo_ms"] / out["pjsua2_bridge_echo_ms"], 2)
        return out
    finally:
        bridge.terminate()
        bridge.wait(10)


def frame_path() -> dict[str, Any]:
    """CPU of the Python frame path per call-second, replayed without a clock (bench/frame_path.py), in its own
    process: an echo call and an agent call with echo, against a copy port in the same run."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "frame_path.json"
    subprocess.run([sys.executable, "-m", "bench.frame_path", "--json", str(out)], check=True, cwd=ROOT,
                   capture_output=True, timeout=300)
    res: dict[str, Any] = json.loads(out.read_text())
    return res


def clock_jitter(gw: Gateway, seconds: float = 10.0) -> dict[str, Any]:
    before = len(gw.events("call_end"))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: call(f"sip:echo@127.0.0.1:{gw.port}", "--duration", str(seconds)), range(4)))
    deadline = time.monotonic() + 10
    while len(gw.events("call_end")) < before + 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    ends = gw.events("call_end")[before:]
    return {"calls": len(ends), "tick_p50_ms": max(e.get("tick_p50_ms", 0) for e in ends),
            "tick_p99_ms": max(e.get("tick_p99_ms", 0) for e in ends),
            "tick_max_ms": max(e.get("tick_max_ms", 0) for e in ends)}


CLIPSET_SETTINGS = {
    "defaults (onset 2, confirm 600)": DetectorSettings(),
    "onset 1 frame": DetectorSettings(onset_frames=1),
    "onset 3 frames": DetectorSettings(onset_frames=3),
    "confirm 400 ms": DetectorSettings(confirm_ms=400),
    "confirm 800 ms": DetectorSettings(confirm_ms=800),
}


def clipset_table() -> list[dict[str, Any]]:
    """Server-side reaction vs false stops on the labelled clip set, for the defaults and their neighbours."""
    rows = []
    for name, settings in CLIPSET_SETTINGS.items():
        row = {"settings": name, **clipset.evaluate(settings).row()}
        rows.append(row)
        print(f"  {name}: {row}", flush=True)
    return rows


def pipecat_rows() -> list[dict[str, Any]]:
    """Pipecat's interruption path on the same clip set (bench/pipecat_compare.py), when `make bench-extra` has
    made .venv-bench; the clip set goes over as WAVs and a manifest (bench/export_clipset.py)."""
    py = ROOT / ".venv-bench" / "bin" / "python"
    if not py.exists():
        print("Pipecat rows skipped: no .venv-bench (make bench-extra)", flush=True)
        return []
    print("Pipecat's interruption path on the clip set (real time, several minutes) ...", flush=True)
    clips = export_clipset.export()
    out = RESULTS / "pipecat.json"
    subprocess.run([str(py), "-m", "bench.pipecat_compare", "--clips", str(clips.parent), "--json", str(out)],
                   check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows: list[dict[str, Any]] = json.loads(out.read_text())
    return rows


Row = tuple[str, Any, str, str]
"""A table row: metric, value, the key of its target in `targets.verdicts` ("": none), note."""


def false_stop_rows(clean: dict[str, Any], impaired: dict[str, Any]) -> list[Row]:
    """The echo-only and backchannel rows, each clean beside impaired."""
    fs, fi = clean, impaired
    line = f"{fi['line']}, same scripts"
    echo = (f"echo {fs['echo_delays_ms'][0]}-{fs['echo_delays_ms'][-1]} ms, -{fs['echo_loss_db'][0]} to "
            f"-{fs['echo_loss_db'][-1]} dB, noise {LINE_NOISE_SNR_DB:g} dB SNR "
            f"({'/'.join(map(str, fs['line_noise_dbfs']))} dBFS)")
    return [
        ("echo-only calls paused / stopped", f"{fs['echo_calls_paused']}/{fs['echo_calls_stopped']}",
         "wire_false_stops.echo_only",
         f"of {fs['echo_calls']}; {echo}; the caller heard {fs['echo_false_barge_ins_heard']} stops over 450 ms"),
        ("... impaired line", f"{fi['echo_calls_paused']}/{fi['echo_calls_stopped']}",
         "wire_false_stops_impaired.echo_only",
         f"of {fi['echo_calls']}; {line}; the caller heard {fi['echo_false_barge_ins_heard']} stops over 450 ms"),
        ("backchannel calls stopped", fs["backchannel_calls_stopped"], "wire_false_stops.backchannel",
         f"of {fs['backchannel_calls']}"),
        ("... impaired line", fi["backchannel_calls_stopped"], "wire_false_stops_impaired.backchannel",
         f"of {fi['backchannel_calls']}; {line}"),
        ("backchannel pause p50 (ms)", fs["backchannel_pause_p50_ms"], "",
         f"audible gap, resumed where it paused; the caller heard p50 {fs['backchannel_pause_heard_p50_ms']} ms"),
        ("... impaired line", fi["backchannel_pause_p50_ms"], "",
         f"{line}; the caller heard p50 {fi['backchannel_pause_heard_p50_ms']} ms"),
    ]


def print_rows(rows: list[Row], judged: dict[str, targets.Verdict]) -> None:
    """The table, with each row's target and PASS or FAIL where it has one."""
    width = max(len(r[0]) for r in rows)
    values = max(8, *(len(str(r[1])) for r in rows))
    aim = max(len(v.target) for v in judged.values()) if judged else 0
    print()
    print(f"{'metric':<{width}}  {'value':>{values}}  {'target':<{aim}}  {'':<4}  note")
    for name, value, key, note in rows:
        v = judged.get(key)
        target, result = (v.target, "PASS" if v.passed else "FAIL") if v else ("", "")
        print(f"{name:<{width}}  {value!s:>{values}}  {target:<{aim}}  {result:<4}  {note}".rstrip())
    print()


def report_targets(judged: dict[str, targets.Verdict]) -> int:
    """Print the missed targets; the exit status: 1 when any was missed."""
    missed = [f"{k}: {v.measured} (target {v.target})" for k, v in judged.items() if not v.passed]
    print(f"targets: {len(judged) - len(missed)} of {len(judged)} met" + "".join(f"\n  MISSED {m}" for m in missed))
    return 1 if missed else 0


def false_stops_both(gw: Gateway, tmp: Path, trials: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    print("false stops on the wire: echo-only and backchannel callers ...", flush=True)
    fs = wire_false_stops(gw, tmp, trials, seed)
    print(f"... the same on an impaired line ({IMPAIRED.describe()}) ...", flush=True)
    return fs, wire_false_stops(gw, tmp, trials, seed, IMPAIRED)


def false_stops_only(trials: int, seed: int) -> int:
    """`BENCH_ONLY=false_stops`: only the wire's echo-only and backchannel calls, written to false_stops.json."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        gw = start_gateway(gateway_config(port), tmp, port)
        try:
            fs, fi = false_stops_both(gw, tmp, trials, seed)
        finally:
            gw.stop()
    out: dict[str, Any] = {"bench": "false_stops", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "seed": seed, "wire_false_stops": fs, "wire_false_stops_impaired": fi}
    judged = targets.verdicts(out)
    print_rows(false_stop_rows(fs, fi), judged)
    out["targets"] = {k: asdict(v) for k, v in judged.items()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "false_stops.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'false_stops.json'}")
    return report_targets(judged)


def main() -> int:
    trials = int(os.environ.get("BENCH_TRIALS", "20"))
    seed = int(os.environ.get("BENCH_SEED", "1"))
    if os.environ.get("BENCH_ONLY") == "false_stops":
        return false_stops_only(trials, seed)
    print("Python frame path, replayed (CPU per call-second) ...", flush=True)
    fp = frame_path()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        gw = start_gateway(gateway_config(port), tmp, port)
        try:
            print("barge-in on the labelled clip set (server side) ...", flush=True)
            c = clipset_table()
            print("barge-in reaction on the wire ...", flush=True)
            b = barge_in(gw, tmp, trials, seed)
            fs, fi = false_stops_both(gw, tmp, trials, seed)
            print(f"barge-in on an impaired line ({IMPAIRED.describe()}) ...", flush=True)
            bl = barge_in_impaired(gw, tmp, trials, seed + 1)
            print("CPU per echo call-second, 4 calls: voicegate vs pjsua2 bridge echo ...", flush=True)
            cpu = cpu_per_call_second(gw, tmp)
            print("echo round trip, voicegate vs sipp -rtp_echo ...", flush=True)
            e = echo_round_trip(gw, tmp, 5)
            print("media clock jitter, 4 concurrent calls ...", flush=True)
            j = clock_jitter(gw)
        finally:
            gw.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    c += pipecat_rows()
    rows: list[Row] = [
        ("barge-in reaction p50 (ms)", b["p50_ms"], "", ""),
        ("barge-in reaction p95 (ms)", b["p95_ms"], "barge_in",
         f"n={b['n']} ({b['agent_silent_at_onset']} began in a pause)"),
        ("barge-in p50 / p95, impaired line (ms)", f"{bl['p50_ms']}/{bl['p95_ms']}", "",
         f"reported, not judged: the line itself holds packets 0-40 ms each way; {bl['line']}; n={bl['n']}; "
         f"caller's RTP jitter p50 {bl['caller_rx_jitter_p50_ms']} ms"),
        *false_stop_rows(fs, fi),
        ("CPU per echo call-second, voicegate (ms)", cpu["voicegate_echo_ms"], "",
         f"4 calls at once; median of {len(cpu['runs_ms']['voicegate_echo'])} runs {cpu['runs_ms']['voicegate_echo']}"),
        ("CPU per echo call-second, pjsua2 bridge (ms)", cpu["pjsua2_bridge_echo_ms"], "",
         f"baseline, interleaved in the same run {cpu['runs_ms']['pjsua2_bridge_echo']}"),
        ("CPU ratio voicegate / bridge", cpu["ratio"], "cpu_per_call_second", ""),
        ("Python frame path, echo / agent call (ms CPU per call-s)",
         f"{fp['us_per_call_s']['echo'] / 1000:.2f}/{fp['us_per_call_s']['agent'] / 1000:.2f}", "",
         f"replayed without a clock; a copy port {fp['us_per_call_s']['copy port'] / 1000:.2f}, same run"),
        ("... ratio to the copy port, echo / agent call",
         f"{fp['ratio_to_copy_port']['echo']}/{fp['ratio_to_copy_port']['agent']}", "", "baseline, same run"),
        ("echo round trip, voicegate (ms)", e["voicegate_ms"], "", ""),
        ("echo round trip, sipp -rtp_echo (ms)", e["sipp_rtp_echo_ms"], "", "baseline, same caller, same run"),
        ("added by voicegate (ms, round trip)", e["added_ms"], "echo_round_trip", ""),
        ("voicegate / sipp ratio", e["ratio"], "", ""),
        ("clock tick p50, 4 calls (ms)", j["tick_p50_ms"], "", "nominal 20"),
        ("clock tick p99, 4 calls (ms)", j["tick_p99_ms"], "", ""),
    ]
    out: dict[str, Any] = {
        "bench": "foundation", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seed": seed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "barge_in": b, "wire_false_stops": fs, "wire_false_stops_impaired": fi, "barge_in_impaired": bl,
        "cpu_per_call_second": cpu, "frame_path": fp, "echo_round_trip": e, "clock_jitter": j, "clipset": c}
    judged = targets.verdicts(out)
    out["targets"] = {k: asdict(v) for k, v in judged.items()}
    print_rows(rows, judged)
    cols = {"reaction_p50_ms": "p50 ms", "reaction_p95_ms": "p95 ms", "missed": "missed",
            "echo_false_pauses": "echo pauses", "echo_false_stops": "echo stops", "backchannel_stops": "bc stops",
            "backchannel_pause_p50_ms": "bc pause ms"}
    print(f"clip set, server side: {c[0]['interrupt_calls']} interruptions, {c[0]['echo_calls']} echo-only calls, "
          f"{c[0]['backchannel_calls']} backchannels (bc)")
    print(f"{'settings':<32}" + "".join(f"{v:>12}" for v in cols.values()))
    for row in c:
        print(f"{row['settings']:<32}" + "".join(f"{row[k]!s:>12}" for k in cols))
    for row in c:
        if "note" in row:
            print(f"{row['settings']}: {row['note']}; {row['stopped_before_onset']} interruption clips stopped on "
                  "echo before the caller spoke (not in p50/p95)")
    (RESULTS / "foundation.json").write_text(json.dumps(out, indent=2))
    print(f"\nwrote {RESULTS / 'foundation.json'}")
    return report_targets(judged)


if __name__ == "__main__":
    raise SystemExit(main())
