"""Export the labelled clip set (tests/clipset.py) as 16 kHz WAV files and a JSON manifest, for runners that cannot
import voicegate (bench/pipecat_compare.py runs in .venv-bench). Each clip carries the parameters `clipset.evaluate()`
gives `simulate()` and the caller's onset frame as the clip set defines it; the manifest also names the whisper-base
directory joined from voicegate's packaged model (an offline STT for Pipecat).

Usage: python -m bench.export_clipset [DIR]   (default bench/results/clipset)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from agents.speech.whisper_model import whisper_base_dir
from tests import audio, clipset

DEFAULT_DIR = Path(__file__).resolve().parent / "results" / "clipset"


def clips() -> list[dict[str, Any]]:
    """The clips of `clipset.evaluate()` with its default echo losses, in its order, with the caller's onset frame."""
    callers, bcs = clipset.caller_utterances(), clipset.backchannels()
    out = []
    for c in clipset.clip_specs():
        caller, frame = None, None
        if c.caller is not None:
            sounds, prefix = (bcs, "bc") if c.kind == "backchannel" else (callers, "caller")
            caller = f"{prefix}{c.caller}.wav"
            frame = int(c.caller_at_s * 50) + audio.onset_index(sounds[c.caller])
        out.append({"kind": c.kind, "agent": f"agent{c.agent}.wav", "seconds": round(c.seconds, 3), "seed": c.seed,
                    "caller": caller, "caller_at_s": c.caller_at_s if caller else 0.0, "caller_frame": frame,
                    "echo_db": c.echo_db, "echo_delay_ms": c.echo_delay_ms, "noise_snr_db": c.noise_snr_db})
    return out


def export(out_dir: Path = DEFAULT_DIR) -> Path:
    """Write the WAVs and manifest.json into out_dir; returns the manifest's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, xs in (("agent", clipset.agent_turns()), ("caller", clipset.caller_utterances()),
                     ("bc", clipset.backchannels())):
        for i, x in enumerate(xs):
            audio.write_wav(out_dir / f"{name}{i}.wav", x)
    manifest = out_dir / "manifest.json"
    manifest.write_text(json.dumps({"sample_rate": 16000, "frame_ms": 20, "whisper_model": str(whisper_base_dir()),
                                    "clips": clips()}, indent=1))
    return manifest


if __name__ == "__main__":
    print(export(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR))
