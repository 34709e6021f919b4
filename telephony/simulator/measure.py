"""Measurements on the caller's side of the wire, from the caller's sent and received tracks (one frame clock).

Onsets are defined on what the gateway can hear: the first 20 ms frame within 20 dB of the utterance's peak after
the telephone band (DESIGN §2); never by an absolute level.
"""

from __future__ import annotations

import numpy as np

from media.frames import SAMPLE_RATE
from media.resample import resample


def frames_db(x: np.ndarray) -> np.ndarray:
    f = x[: len(x) // 320 * 320].reshape(-1, 320).astype(np.float64)
    return np.asarray(10 * np.log10((f**2).mean(axis=1) / 32768.0**2 + 1e-12))


def telephone_band(x: np.ndarray) -> np.ndarray:
    """What survives G.711: down to 8 kHz and back up."""
    pcm = np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()
    out = resample(resample(pcm, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE)
    return np.frombuffer(out, dtype="<i2").astype(np.float32)


def onset_index(x: np.ndarray, rel_db: float = -20.0) -> int:
    """First 20 ms frame (index) within rel_db of the utterance's loudest frame, on the telephone band."""
    e = frames_db(telephone_band(x))
    return int(np.nonzero(e >= e.max() + rel_db)[0][0])


def caller_onset_frame(sent: np.ndarray, speak_start: int, rel_db: float = -20.0) -> int:
    """First frame of the caller's utterance within `rel_db` of its peak, on the telephone band (-20: the onset
    reactions are measured from; -40: the first sound, such as the quiet "s" of "sorry" before the vowel)."""
    return speak_start + onset_index(sent[speak_start * 320 :], rel_db)


def talking_before(received_db: np.ndarray, frame: int, frames: int = 10, quiet_db: float = -40.0) -> bool:
    """Whether agent audio (within `quiet_db` of the loudest received frame) was heard in the `frames` frames
    before `frame`: a caller who began in a pause of the agent's interrupted nothing. Levels per frame (frames_db)."""
    return bool((received_db[max(0, frame - frames) : frame] > received_db.max() + quiet_db).any())


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


def echo_lag(sent: np.ndarray, heard: np.ndarray, max_lag_ms: float = 500.0) -> tuple[float, float]:
    """Delay (ms) at which `heard` best matches `sent`, and the normalised correlation there (1.0: a copy)."""
    n = min(len(sent), len(heard))
    tx, rx = sent[:n].astype(np.float64), heard[:n].astype(np.float64)
    size = 1 << (2 * n - 1).bit_length()  # FFT correlation: np.correlate took 52 s on 6 s of audio
    c = np.fft.irfft(np.fft.rfft(rx, size) * np.conj(np.fft.rfft(tx, size)), size)
    c = c[: int(max_lag_ms * SAMPLE_RATE / 1000)]
    lag = int(np.argmax(c))
    return lag * 1000.0 / SAMPLE_RATE, float(c[lag] / np.sqrt((tx**2).sum() * (rx**2).sum()))


def caller_end_frame(sent: np.ndarray, speak_start: int, rel_db: float = -30.0) -> int:
    """Last frame of the caller's utterance within `rel_db` of its peak, on the telephone band."""
    e = frames_db(telephone_band(sent[speak_start * 320 :]))
    return speak_start + int(np.nonzero(e >= e.max() + rel_db)[0][-1])


def turn_latency_ms(sent: np.ndarray, received: np.ndarray, speak_start: int, quiet_db: float = -40.0) -> float:
    """End of the caller's utterance -> first agent audio the caller receives after it (-1: none came)."""
    end = caller_end_frame(sent, speak_start)
    e = frames_db(received)
    loud = np.nonzero(e[end + 1 :] > e.max() + quiet_db)[0]
    return float((loud[0] + 1) * 20.0) if loud.size else -1.0
