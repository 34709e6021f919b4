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


def _clip(kind: str, agent: int, seconds: float, seed: int, **kw: Any) -> dict[str, Any]:
    return {"kind": kind, "agent": f"agent{agent}.wav", "seconds": round(seconds, 3), "seed": seed, "caller": None,
            "caller_at_s": 0.0, "caller_frame": None, "echo_db": None, "echo_delay_ms": 100, "noise_snr_db": None,
            **kw}


def clips() -> list[dict[str, Any]]:
    """The clips of `clipset.evaluate()` with its default echo losses, in its order."""
    agents = clipset.agent_turns()
    out = []
    for i, u in enumerate(clipset.caller_utterances()):
        at = 1.2 + (i % 5) * 0.45
        out.append(_clip("interrupt", i % len(agents), at + 2.5, i, caller=f"caller{i}.wav", caller_at_s=at,
                         caller_frame=int(at * 50) + audio.onset_index(u), echo_db=-12.0 if i % 2 else None,
                         echo_delay_ms=200 if i % 2 else 100, noise_snr_db=30 if i % 3 == 0 else None))
    for k, agent in enumerate(agents):
        for d in clipset.ECHO_DELAYS_MS:
            for loss in clipset.ECHO_LOSS_DB:
                out.append(_clip("echo", k, agent.size / 16000, k, echo_db=-float(loss), echo_delay_ms=d,
                                 noise_snr_db=30))
    for j, b in enumerate(clipset.backchannels()):
        at = 1.5 + (j % 3) * 0.4
        out.append(_clip("backchannel", j % len(agents), 4.0, j, caller=f"bc{j}.wav", caller_at_s=at,
                         caller_frame=int(at * 50) + audio.onset_index(b), noise_snr_db=30))
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
