"""Renderings of fixed lines (configured prompts, dialog replies, simulator script lines) kept on disk, so a
restarted gateway, a restarted worker or the next simulator run has them without synthesising again.

Only text from configuration and scripts comes here, never a reply written per call (an LLM's words may carry a
caller's data). An entry's name is a hash of the engine's identity (model file, size and time, or program version),
the voice and the text, so a new model or voice never plays an old rendering. Files are WAV, written to a temporary
name and renamed, so gateways sharing the directory never read half a file. The directory is kept under
`max_bytes` by removing the least recently used files. A cache that cannot be written is skipped, never fatal.
Hand-written: it is a directory of WAV files named by hash, smaller than any caching library's set-up.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import wave
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agents.speech.tts import Tts

log = logging.getLogger(__name__)

MAX_BYTES = 256 * 1024 * 1024


class TtsDiskCache:
    def __init__(self, root: Path, max_bytes: int = MAX_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._pruned = False

    def _path(self, engine: Tts, text: str) -> Path:
        digest = hashlib.sha256(f"{engine.identity}\0{text}".encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.wav"

    def synthesize(self, engine: Tts, text: str) -> tuple[bytes, int]:
        """`engine.synthesize(text)`, from disk when it was rendered before."""
        path = self._path(engine, text)
        try:
            with wave.open(str(path), "rb") as w:
                pcm, rate = w.readframes(w.getnframes()), w.getframerate()
            os.utime(path)  # recently used: kept by the pruning
            return pcm, rate
        except (OSError, EOFError, wave.Error):
            pass
        pcm, rate = engine.synthesize(text)
        self._store(path, pcm, rate)
        return pcm, rate

    def _store(self, path: Path, pcm: bytes, rate: int) -> None:
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(pcm)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(buf.getvalue())
            tmp.replace(path)
        except OSError as e:
            log.warning("TTS cache %s not written: %s", self.root, e)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return
        if not self._pruned:
            self._pruned = True
            self.prune()

    def prune(self) -> None:
        """Remove the least recently used renderings until the directory holds at most `max_bytes`."""
        try:
            files = [(st.st_mtime, st.st_size, p) for p in self.root.glob("*/*.wav") for st in [p.stat()]]
        except OSError:
            return
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size
