"""Measurements on the caller's side of the wire, from the caller's sent and received tracks (one frame clock)."""

from __future__ import annotations

import numpy as np

from tests import audio


def frames_db(x: np.ndarray) -> np.ndarray:
    f = x[: len(x) // 320 * 320].reshape(-1, 320).astype(np.float64)
    return np.asarray(10 * np.log10((f**2).mean(axis=1) / 32768.0**2 + 1e-12))


def caller_onset_frame(sent: np.ndarray, speak_start: int) -> int:
    """First frame of the caller's utterance within 20 dB of its peak, on the telephone band."""
    return speak_start + audio.onset_index(sent[speak_start * 320 :])


def last_agent_frame(received: np.ndarray, after: int, quiet_db: float = -40.0, gap_frames: int = 10) -> int:
    """Last frame at or after `after` that carries agent audio before a gap of `gap_frames` quiet frames.

    Quiet is `quiet_db` below the loudest received frame.
    """
    e = frames_db(received)
    loud = e > e.max() + quiet_db
    last = after - 1
    quiet = 0
    for i in range(after, len(e)):
        if loud[i]:
            last, quiet = i, 0
        else:
            quiet += 1
            if quiet >= gap_frames:
                break
    return last


def agent_audio_after(received: np.ndarray, frame: int, seconds: float, quiet_db: float = -40.0) -> float:
    """Seconds of agent audio received in the `seconds` after `frame`."""
    e = frames_db(received)
    loud = e > e.max() + quiet_db
    return float(loud[frame : frame + int(seconds * 50)].sum() * 0.02)


def reaction_ms(sent: np.ndarray, received: np.ndarray, speak_start: int) -> float:
    """Caller onset -> end of the last agent frame the caller heard."""
    onset = caller_onset_frame(sent, speak_start)
    return (last_agent_frame(received, onset) - onset + 1) * 20.0
