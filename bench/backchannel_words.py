"""Backchannels by their words on the labelled clip set (issue #10): how many stop the agent with the words
(agents/backchannel.py, moonshine transcripts on the simulation's clock: tests/clipset_words.py) and by duration
alone, for the clip set's short backchannels, strings of backchannels said in one breath, and its interruptions;
with words that are no backchannel confirming at once, and no sooner than `confirm_ms`.

Usage: python -m bench.backchannel_words   (2-3 minutes on 2 cores)
Prints a table and writes bench/results/backchannel_words.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from agents.backchannel import BackchannelSettings
from agents.speech.moonshine_asr import MoonshineAsr
from tests.clipset_words import evaluate_words

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = {"backchannel": "backchannels under 0.6 s", "long_backchannel": "strings of backchannels, 0.5-1.1 s",
         "interrupt": "interruptions"}


VARIANTS = {"words confirm at once": BackchannelSettings(),
            "words confirm from confirm_ms": BackchannelSettings(confirm_early=False)}


def main() -> None:
    asr = MoonshineAsr()
    asr.load()
    started = time.time()
    out: dict[str, dict[str, dict[str, object]]] = {}
    print("| clips | n | variant | stop the agent: duration only | with words | resumed by words | confirmed by "
          "words | onset -> confirmation p50, duration only / with words |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, settings in VARIANTS.items():
        rows = evaluate_words(asr, settings)
        out[variant] = {k: r.summary() for k, r in rows.items()}
        for k, r in out[variant].items():
            print(f"| {NAMES[k]} | {r['clips']} | {variant} | {r['stops_duration_only']} | {r['stops_with_words']} | "
                  f"{r['resumed_by_words']} | {r['confirmed_by_words']} | {r['confirm_p50_ms_duration_only']} / "
                  f"{r['confirm_p50_ms_with_words']} ms |")
    for variant, rows_out in out.items():
        for k, r in rows_out.items():
            for m in r["misheard"]:  # type: ignore[attr-defined]
                print(f"{variant}, {NAMES[k]}: stopped with words, heard: {m}")
    RESULTS.mkdir(exist_ok=True)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "load_average": os.getloadavg()[0],
            "seconds": round(time.time() - started, 1)}
    (RESULTS / "backchannel_words.json").write_text(json.dumps({"meta": meta, "variants": out}, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
