"""Where our own audio comes back: the echo path's delay and loss, estimated from level envelopes (sans-IO).

Written here instead of running a canceller or a noise suppressor, because the numbers favour it
(`python -m bench.aec_eval`, the labelled clip set's default subset of 56 clips, 2026-11-26, load average 9.5): the
detector with this estimate reacted in 40 / 69 ms (p50 / p95), paused on none of 24 echo clips and stopped for
none of 14 backchannels. libspeexdsp's MDF canceller (600 ms tail) with its residual echo suppressor removed 1.3 dB
of echo in the first second and 27.1 dB once converged (from 4 s), at 223 us a frame, but paused the agent on 12 of
the 24 echo clips and reacted in 60 / 177 ms; without the suppressor it removed 1.0 / 12.0 dB and reacted in
40 / 225 ms. RNNoise removed no echo (0.4 dB), missed 2 of 18 interruptions and cost 3.4 ms a frame. The greeting,
before any canceller has converged, is when callers interrupt most.

Phone legs return our audio after 20-500 ms, 6-20 dB down; the frame levels of what we played and what came back
correlate strongly at that lag, so every 200 ms the lag with the best correlation over the last 2 s gives the delay,
and the median level difference there gives the loss. The detector then expects echo at exactly `level played lag
frames ago + loss`, instead of assuming the worst over the whole window.

On the wire the delay is longer and moves: 24 echo-only calls of the wire bench, recorded at the gateway
(2026-11-26), came back after 100-200 ms on their nominal 20 ms legs and 640-700 ms on their 500 ms ones, and on the
impaired line (1% loss, 20 ms jitter) the best-fitting delay moved by up to 500 ms within a call. Hence a 1 s search
(`max_lag_frames`), the echo expected over the delays of the last 3 s of estimates (`drift_estimates`), no delay
taken in the call's first second (its onset in the line noise fitted a 0-20 ms delay), and `explains_onset`: every
burst about to pause playout is checked against the second before it (and its latter half, for a delay that just
jumped) at every delay, our silences counted (within our words the echo's level follows ours loosely on the wire, its
coming and going closely). On the clip set's
wire-like echo-only clips (`tests.clipset.wire_echo_specs`: 20-800 ms, -56 dBFS noise, clean and with a drifting
delay and lost frames) that took the agent's pauses from 26 of 72 clips to none, and left the clip set's reaction
(40 / 69 ms), its 24 echo and 14 backchannel clips as they were.

The estimate learns only from frames where the caller is quiet, so an echo that starts mid-call (the caller turns
on a speakerphone) looked like caller speech, never taught anything, and paused the agent again and again.
`explain_burst` takes the frames of the recent paused bursts, caller speech or not: when one lag's played levels
explain them closely (correlation, a tight and attenuated level difference, quiet wherever nothing was played that
long before), they were our own audio, and the path starts from them, provisionally: sound above the threshold
where that path expects no echo is a person, and `refute` restores the path before. On the clip set's 72 agent
turns whose echo starts 3 s in, the agent paused 571 times before (the path stayed `none` in most), 127 times with
it (48 turns once, none more than 7 times, the path `echo` at the end of 67) and 61 with `explains_onset` too (none
more than twice, the path `echo` at the end of all 72); the clip set's other rows, also with callers at -30 and -36
dBFS, and 240 random interruptions and backchannels at -40 to -20 dBFS (half over a known echo) confirmed the same
barge-ins.

`explains_onset` leaves the frame just before the burst out of its context and fits only an echo that comes back
attenuated: with the echo known (200 ms, -12 dB), the caller's first frame, too quiet to join the burst, sat in the
latter half-second of context and fitted the caller's words to a 980 ms delay at +4 dB (median -4.8 dB); every onset
of the caller's was then taken for our own echo until 2.5 s and the barge-in was missed, for 4 of 60 fresh piper
renderings of the unit tests' prompt. With both, none of those 60 missed at 100-400 ms and -6/-12 dB (5 of 366
before), reaction p95 went from 8 to 4 frames, the wire bench's 20 impaired echo-only calls paused the agent 0 times
in two runs (a check on the fit's spread instead paused it 1 and 2 times: the wire's real echo spread 8-16 dB), and
the clip set's rows stayed as they were (2026-11-26).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from media.frames import FLOOR_DBFS


@dataclass(frozen=True)
class EchoPathSettings:
    max_lag_frames: int = 50
    """Longest echo delay looked for, in 20 ms frames (50 = 1 s: a 500 ms leg plus our own media path and both
    jitter buffers, which grow on an impaired line)."""
    none_lag_frames: int = 30
    """`none` is decided once what we played this many frames ago (30 = 600 ms) could have come back (or
    `max_lag_frames`, if shorter): a leg without echo must not hold the cautious start for a whole second. A longer
    echo found later still makes the path `echo`; until then `explains_onset` keeps it from pausing playout."""
    window_frames: int = 100
    """Frames of history (20 ms each) each estimate correlates: 100 = the last 2 s."""
    every_frames: int = 10
    """Frames between two estimates (10 = every 200 ms)."""
    active_dbfs: float = -45.0
    """Played frames at or below this level (dBFS) carry nothing to correlate with."""
    min_active_frames: int = 25
    """Frames of played audio (with their returned frames, the caller quiet) an estimate needs before it decides."""
    corr_echo: float = 0.6
    """Correlation (0-1) of played and returned levels at the best lag that makes it the echo path."""
    corr_none: float = 0.3
    """Best correlation below which, with enough played audio, the leg has no echo."""
    loss_percentile: float = 90.0
    """Percentile (50-100) of (returned - played) level at the lag taken as the echo's loss (a loud echo frame
    must not pass for the caller)."""
    spread_frames: int = 2
    """The echo of one frame is expected within this many frames either side of the estimated lag."""
    none_loss_db: float = 40.0
    """No echo when everything that came back stayed this far below the loudest frame we played long enough ago:
    a silent leg (a phone on mute, digital silence) has no level to correlate."""
    burst_min_frames: int = 5
    """`explain_burst`: frames of the burst that met audio we played, at the lag tried, before it may decide."""
    corr_burst: float = 0.85
    """... and the correlation (0-1) its levels need with what we played at one lag."""
    burst_spread_db: float = 12.0
    """... and the most its level may stray from what we played (10th to 90th percentile of the difference)."""
    burst_quiet_db: float = 10.0
    """... and frames with nothing played around the lag before them must be this far below its median level."""
    burst_max_loss_db: float = -4.5
    """... and the least an echo is attenuated (the median difference): louder is a person, not our audio."""
    drift_estimates: int = 15
    """The echo is expected over the range of lags of this many estimates (15 = 3 s) taken since the path was
    last found elsewhere: the jitter buffers of an impaired line move the delay by a frame or more now and then."""
    max_drift_frames: int = 6
    """... as long as those lags stay within this many frames (6 = 120 ms); a lag further off starts a new range."""
    min_echo_frames: int = 50
    """No lag is taken as the echo path in the first this many frames of the call (50 = 1 s): on the wire, the echo's
    onset in the line noise correlated best with what we played 0-20 ms before (until then the cautious start and
    `explains_onset` hold)."""
    echo_over_noise_db: float = 6.0
    """An estimate takes a lag as the echo path only when the returned frames there stand this far (dB, median) over
    the quietest tenth of the window: a chance correlation early in the call put an echo in the line noise."""
    onset_context_frames: int = 50
    """`explains_onset`: inbound frames before a burst (50 = 1 s) that may show it is our own echo at some lag."""
    onset_min_frames: int = 5
    """... of which this many must have met audio we played at that lag."""
    corr_onset: float = 0.6
    """... and correlate (0-1) with it."""
    onset_guard_frames: int = 1
    """... leaving out the frames just before the burst: the caller's first, quieter frame (under the threshold, so
    not in the burst) joined the context and fitted the caller's words to a 980 ms delay at +4 dB."""
    onset_max_loss_db: float = -4.5
    """... and the fit must come back at least this attenuated (the median level difference): louder is a person."""


class EchoPath:
    """Feed `push()` once per tick; `predicted_db()` is the echo level expected in this tick's inbound frame."""

    def __init__(self, settings: EchoPathSettings | None = None) -> None:
        self.s = settings or EchoPathSettings()
        n = self.s.window_frames + self.s.max_lag_frames + 2
        self._ref: deque[float] = deque([FLOOR_DBFS] * n, maxlen=n)
        self._in: deque[float] = deque([np.nan] * self.s.window_frames, maxlen=self.s.window_frames)
        self._all: deque[float] = deque([np.nan] * self.s.window_frames, maxlen=self.s.window_frames)
        """Every inbound level, caller speech or not (for `explain_burst`)."""
        self._tick = 0
        lags = np.arange(self.s.max_lag_frames + 1)
        self._rows = (n - self.s.window_frames - lags)[:, None] + np.arange(self.s.window_frames)[None, :]
        """Row `lag`: the indices in `_ref` of what we played `lag` frames before each frame of `_in`."""
        self.state = "unknown"
        """`unknown` (not enough played audio yet), `echo` (lag and loss known) or `none` (no audible echo)."""
        self.lag = 0
        self._lags: deque[int] = deque(maxlen=self.s.drift_estimates)
        """The lags of the recent estimates that found the echo (`drift_estimates`)."""
        self.loss_db = 0.0
        self.corr = 0.0
        self._before: tuple[str, int, float, float, list[int]] | None = None
        """The path before one taken from bursts (`explain_burst`), until the estimate confirms it."""

    def push(self, played_db: float, inbound_db: float, learn: bool) -> None:
        """Levels of this tick's outbound and inbound frames; `learn=False` while the caller may be speaking."""
        self._ref.append(played_db)
        self._in.append(inbound_db if learn else np.nan)
        self._all.append(inbound_db)
        self._tick += 1
        if self._tick % self.s.every_frames == 0:
            self._estimate()

    def predicted_db(self, played_now: float) -> float | None:
        """Expected echo level of this tick's inbound frame, before `push` (`played_now`: this tick's outbound
        level): None when unknown, FLOOR_DBFS when there is none."""
        if self.state == "unknown":
            return None
        if self.state == "none":
            return FLOOR_DBFS
        return self._near_played(played_now) + self.loss_db

    @property
    def provisional(self) -> bool:
        """The path was taken from bursts and the estimate has not confirmed it yet."""
        return self._before is not None

    def expects_echo(self, played_now: float) -> bool:
        """Whether we played audio around `lag` frames ago (so this tick's inbound frame, before `push`, may hold
        its echo)."""
        return self._near_played(played_now) > self.s.active_dbfs

    @property
    def lag_range(self) -> tuple[int, int]:
        """The lags the echo has come back at lately (`drift_estimates`), `lag` included."""
        return min(self._lags, default=self.lag), max(self._lags, default=self.lag)

    def _near_played(self, played_now: float) -> float:
        """The loudest frame we played `lag_range` frames before this tick's (`played_now`, not pushed yet), give
        or take `spread_frames`."""
        lo, hi = self.lag_range
        now, k = len(self._ref), self.s.spread_frames
        ref = self._ref
        return max(ref[j] if j < now else played_now for j in range(now - hi - k, min(now - lo + k, now) + 1))

    def refute(self) -> None:
        """Drop a path taken from bursts (sound came back where it predicts none): back to the one before."""
        if self._before is not None:
            self.state, self.lag, self.loss_db, self.corr, lags = self._before
            self._lags = deque(lags, maxlen=self.s.drift_estimates)
            self._before = None

    def _estimate(self) -> None:
        s = self.s
        x = np.asarray(self._in, dtype=np.float64)
        valid = ~np.isnan(x)
        ref = np.asarray(self._ref, dtype=np.float64)
        active = ref > s.active_dbfs
        if not (valid.any() and active.any()):
            return  # nothing learnable (the caller talked, or we played nothing): the estimate cannot change
        n = len(ref)
        # the echo of what we played window..max_lag frames ago, at any lag looked for, has come back within x
        lag_n = min(s.none_lag_frames, s.max_lag_frames)
        covered = int((active[n - lag_n - s.window_frames : n - lag_n] & valid).sum())
        covered_enough = covered >= s.min_active_frames
        returned = ref[n - s.window_frames : n - lag_n]
        if covered_enough and x[valid].max() < returned.max() - s.none_loss_db:
            self.state, self.corr = "none", 0.0
            return
        # every lag at once (a loop of np.corrcoef took most of a call's CPU): row `lag` of `ys` is the window of
        # what we played `lag` frames before each inbound frame, `m` the frames of it that count
        ys = ref[self._rows]
        m = active[self._rows] & valid
        c = _lag_correlations(np.where(valid, x, 0.0), ys, m, s.min_active_frames)
        if c is None:
            return
        best_lag = int(np.argmax(c))
        best_c, best_mask = float(c[best_lag]), m[best_lag]
        self.corr = best_c
        if best_c >= s.corr_echo and self._tick >= s.min_echo_frames and percentile(x[best_mask], 50.0) >= (
                percentile(x[valid], 10.0) + s.echo_over_noise_db):
            self._before = None
            y = ref[n - best_lag - s.window_frames : n - best_lag]
            self.state, self.lag = "echo", best_lag
            if self._lags and max(abs(best_lag - lo) for lo in self.lag_range) > s.max_drift_frames:
                self._lags.clear()
            self._lags.append(best_lag)
            # a high percentile, not the median: codecs, jitter and frames that straddle two of ours spread the
            # echo's level around its mean by several dB (on the wire, a -12 dB echo came back up to 7 dB louder)
            self.loss_db = percentile(x[best_mask] - y[best_mask], s.loss_percentile)
        elif best_c < s.corr_none and covered_enough and (self.state != "echo" or bool(np.isfinite(c[self.lag]))):
            self.state = "none"  # an echo known at a lag is only ruled out by frames at that lag

    def learn_last(self, frames: int) -> None:
        """The last `frames` inbound frames were our own echo after all (`explains_onset`): learn from them."""
        w = self.s.window_frames
        k = min(frames, w)
        self._in = deque(list(self._in)[: w - k] + list(self._all)[w - k :], maxlen=w)

    def explains_onset(self, run: int, margin_db: float, judged: tuple[int, int] | None) -> bool:
        """Whether the last `run` inbound frames (a burst about to pause playout) are our own echo: at the lag up to
        `max_lag_frames` where the `onset_context_frames` before them (or the latter half of those, when the delay
        has just jumped) follow what we played best, every frame of the burst stays within `margin_db` of the echo
        expected there (loss as in the estimate). So an echo path that is still unknown, wrongly taken for none, or
        moved by jitter buffers cannot pause playout with our own audio; `judged`, the lag range of the known path
        that set the burst's threshold, has already judged a burst at a lag within it."""
        s = self.s
        full = min(s.onset_context_frames, s.window_frames - run, self._tick - run)  # early in the call: what there is
        return any(self._explains(run, ctx, margin_db, judged) for ctx in dict.fromkeys((full, full // 2)))

    def _explains(self, run: int, ctx: int, margin_db: float, judged: tuple[int, int] | None) -> bool:
        s = self.s
        k = ctx + run
        x = np.asarray(self._all, dtype=np.float64)[-k:]
        if run <= 0 or ctx <= 0 or np.isnan(x).any():
            return False
        ref = np.asarray(self._ref, dtype=np.float64)
        ys = ref[self._rows[:, -k:]]
        m = ys > s.active_dbfs
        cut = run + s.onset_guard_frames
        m[:, -cut:] = False  # the context only: the burst itself may be the caller
        # every frame of the context, our silences included (raised to `active_dbfs`): on the wire, the echo's
        # level within our words follows ours loosely (codec, lost packets), its coming and going closely (a call
        # recorded on the wire: 0.96 at its true lag, where our words alone gave 0.88 at another)
        context = np.ones_like(m)
        context[:, -cut:] = False
        c = _lag_correlations(x, np.maximum(ys, s.active_dbfs), context, s.onset_min_frames)
        if c is None:
            return False
        c[m.sum(axis=1) < s.onset_min_frames] = -np.inf
        lag = int(np.argmax(c))
        if c[lag] < s.corr_onset or (judged is not None and judged[0] <= lag <= judged[1]):
            return False
        d = x[m[lag]] - ys[lag][m[lag]]
        loss = percentile(d, s.loss_percentile)
        if percentile(d, 50.0) > s.onset_max_loss_db:
            return False
        return bool((x[-run:] <= self._loudest_played(ref, lag, run) + loss + margin_db).all())

    def explain_burst(self, frames: int) -> int | None:
        """The lag at which the last `frames` inbound frames (bursts the detector took for the caller) are our own
        echo, else None; the path is then taken from them (provisionally), and the quiet-caller history before them
        (another leg) is dropped."""
        s = self.s
        k = min(frames, s.window_frames)
        x = np.asarray(self._all, dtype=np.float64)[-k:]
        if k <= 0 or np.isnan(x).any():
            return None
        ref = np.asarray(self._ref, dtype=np.float64)
        ys = ref[self._rows[:, -k:]]
        m = ys > s.active_dbfs
        c = _lag_correlations(x, ys, m, s.burst_min_frames)
        if c is None:
            return None
        lag = int(np.argmax(c))
        if c[lag] < s.corr_burst:
            return None
        # where nothing was played around `lag` frames before, an echo has nothing to return: those frames must be
        # quiet (a person's burst runs on through the gaps of our speech and through our pause)
        silent = self._loudest_played(ref, lag, k) <= s.active_dbfs
        if not silent.any() or x[silent].max() > np.median(x[m[lag]]) - s.burst_quiet_db:
            return None
        d = x[m[lag]] - ys[lag][m[lag]]
        loss = percentile(d, s.loss_percentile)
        spread = loss - percentile(d, 100.0 - s.loss_percentile)
        if spread > s.burst_spread_db or percentile(d, 50.0) > s.burst_max_loss_db:
            return None
        self._before = (self.state, self.lag, self.loss_db, self.corr, list(self._lags))
        self.state, self.lag, self.loss_db, self.corr = "echo", lag, loss, float(c[lag])
        self._lags.clear()
        self._in = deque([np.nan] * (s.window_frames - k) + list(x), maxlen=s.window_frames)
        return lag

    def _loudest_played(self, ref: np.ndarray, lag: int, frames: int) -> np.ndarray:
        """For each of the last `frames` inbound frames, the loudest frame in `ref` (`_ref` as an array) played `lag`
        frames before it, give or take `spread_frames`, never after it."""
        k = self.s.spread_frames
        lags = np.arange(max(lag - k, 0), lag + k + 1)
        idx = len(ref) - frames + np.arange(frames)[:, None] - lags[None, :]
        played: np.ndarray = ref[np.maximum(idx, 0)].max(axis=1)
        return played


def _lag_correlations(x: np.ndarray, ys: np.ndarray, m: np.ndarray, min_frames: int) -> np.ndarray | None:
    """Correlation of `x` (finite where `m` may be set) with each row of `ys` over that row's frames in `m`;
    -inf for a row with fewer than `min_frames` of them or no variance; None when no row has a figure."""
    count = m.sum(axis=1)
    safe = np.maximum(count, 1)
    xs = np.where(m, x, 0.0)
    dx = np.where(m, xs - (xs.sum(axis=1) / safe)[:, None], 0.0)
    dy = np.where(m, ys - (np.where(m, ys, 0.0).sum(axis=1) / safe)[:, None], 0.0)
    vx, vy = (dx * dx).sum(axis=1), (dy * dy).sum(axis=1)
    ok = (count >= min_frames) & (vx > 1e-12 * safe) & (vy > 1e-12 * safe)
    if not ok.any():
        return None
    c: np.ndarray = np.where(ok, (dx * dy).sum(axis=1) / np.sqrt(np.where(ok, vx * vy, 1.0)), -np.inf)
    return c


def percentile(a: np.ndarray, q: float) -> float:
    """`np.percentile(a, q)` (its default, linear method) of a non-empty 1-d array, to the last bit: a partial
    sort of the two values it needs, without np.percentile's overhead (most of an estimate's CPU on 100 values)."""
    pos = q / 100.0 * (a.size - 1)
    lo = int(pos)
    hi = min(lo + 1, a.size - 1)
    part = np.partition(a, (lo, hi))
    t = pos - lo
    below, above = float(part[lo]), float(part[hi])
    d = above - below
    return above - d * (1.0 - t) if t >= 0.5 else below + d * t
