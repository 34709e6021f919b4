"""Load mode's progress on stderr: on a terminal one line that tqdm redraws in place (calls done of all, rate,
time left, passed and failed); otherwise, for logs and CI, a plain line per finished call."""

from __future__ import annotations

from typing import TextIO

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream = total, stream
        self.done = self.passed = 0
        self._bar = tqdm(total=total, file=stream, unit="call", dynamic_ncols=True) if stream.isatty() else None

    def call_done(self, passed: bool) -> None:
        self.done += 1
        self.passed += passed
        counts = f"{self.passed} passed, {self.done - self.passed} failed"
        if self._bar is None:
            print(f"[{self.done}/{self.total}] {counts}", file=self.stream, flush=True)
        else:
            self._bar.set_postfix_str(counts, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
