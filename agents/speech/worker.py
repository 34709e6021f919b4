"""An ASR engine in a child process, shared by every call, so recognition can never stall the media clock.

The parent sends requests from any call; the child answers finals before partials, and a newer partial of the same
stream replaces one still waiting (only the latest partial of an utterance is worth computing). Hand-written
because `concurrent.futures` pools have neither priorities nor replacement.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from agents.speech.asr import AsrEngine, AsrError, Audio, Transcript


@dataclass(frozen=True)
class EngineSpec:
    """What the child builds: an engine name (`moonshine`, `whisper`, `vosk`) and its keyword arguments."""

    engine: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def model(self) -> str:
        """The model it loads, for messages: the configured path, or the packaged default."""
        opts = dict(self.options)
        return str(opts.get("model_path") or opts.get("model_dir") or "(the packaged model)")


def make_engine(spec: EngineSpec) -> AsrEngine:
    if spec.engine == "moonshine":
        from agents.speech.moonshine_asr import MoonshineAsr

        m = MoonshineAsr(**dict(spec.options))
        m.load()
        return m
    if spec.engine == "whisper":
        from agents.speech.whisper_asr import WhisperAsr
        from agents.speech.whisper_model import whisper_base_dir

        opts = dict(spec.options)
        if not opts.get("model_path"):
            opts["model_path"] = str(whisper_base_dir())
        return WhisperAsr(**opts)
    if spec.engine == "vosk":
        from agents.speech.vosk_asr import VoskAsr

        return VoskAsr(**dict(spec.options))
    raise AsrError(f"unknown ASR engine {spec.engine!r} (known: moonshine, whisper, vosk)")


@dataclass(frozen=True)
class AsrRequest:
    rid: int
    stream: str
    audio: Audio
    final: bool
    hint: Transcript | None


@dataclass(frozen=True)
class PassTiming:
    """Where one request's time went in the child: waiting in its queue (behind other passes), then running, of
    which `cpu_s` on a core (less than `run_s` when other processes took the cores)."""

    wait_s: float
    run_s: float
    cpu_s: float = 0.0

    def ms(self) -> dict[str, float]:
        """`wait_ms`, `run_ms` and `cpu_ms`, to 0.1 ms, as traces and turn records report them."""
        return {"wait_ms": round(self.wait_s * 1000, 1), "run_ms": round(self.run_s * 1000, 1),
                "cpu_ms": round(self.cpu_s * 1000, 1)}


class RequestQueue:
    """The child's schedule, without I/O: finals first in arrival order, then the latest partial of each stream."""

    def __init__(self) -> None:
        self._finals: deque[AsrRequest] = deque()
        self._partials: OrderedDict[str, AsrRequest] = OrderedDict()

    def put(self, req: AsrRequest) -> int | None:
        """Queue `req`; returns the id of a waiting partial it replaces, if any."""
        if req.final:
            self._finals.append(req)
            return None
        old = self._partials.pop(req.stream, None)
        self._partials[req.stream] = req
        return old.rid if old is not None else None

    def take(self) -> AsrRequest | None:
        if self._finals:
            return self._finals.popleft()
        return self._partials.popitem(last=False)[1] if self._partials else None


def _child(conn: Connection, spec: EngineSpec) -> None:
    try:
        engine = make_engine(spec)
    except Exception as e:
        conn.send(("error", repr(e) if not isinstance(e, AsrError) else str(e)))
        return
    conn.send(("ready", spec.engine))
    queue = RequestQueue()
    arrived: dict[int, float] = {}
    """When each waiting request came in (monotonic s)."""
    cond = threading.Condition()
    closed = False

    def receive() -> None:
        nonlocal closed
        while True:
            try:
                req = conn.recv()
            except (EOFError, OSError):
                req = None
            with cond:
                if req is None:
                    closed = True
                else:
                    arrived[req.rid] = time.monotonic()
                    replaced = queue.put(req)
                    if replaced is not None:
                        waited = time.monotonic() - arrived.pop(replaced)
                        conn.send((replaced, None, PassTiming(waited, 0.0)))  # superseded before it ran
                cond.notify()
            if req is None:
                return

    threading.Thread(target=receive, daemon=True).start()
    while True:
        with cond:
            req = queue.take()
            while req is None and not closed:
                cond.wait()
                req = queue.take()
            if closed or req is None:
                return
        began, cpu = time.monotonic(), time.thread_time()
        try:
            result: object = engine.transcribe(req.audio, req.final, req.hint)
        except Exception as e:
            result = AsrError(f"{spec.engine}: {e!r}")
        timing = PassTiming(began - arrived.pop(req.rid, began), time.monotonic() - began, time.thread_time() - cpu)
        with cond:
            try:
                conn.send((req.rid, result, timing))
            except (BrokenPipeError, OSError):
                return  # the gateway is gone


class AsrWorker:
    """Parent side: `await transcribe(...)` from the event loop; None means a newer partial replaced this one."""

    def __init__(self, spec: EngineSpec, start_timeout_s: float = 120.0) -> None:
        self.spec = spec
        self._timeout = start_timeout_s
        self._conn: Connection | None = None
        self._proc: mp.process.BaseProcess | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[Transcript | None, PassTiming]]] = {}
        self._send_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_done = asyncio.Event()

    @property
    def pid(self) -> int:
        """The worker process's id (for measuring its CPU); AsrError when it is not running."""
        if self._proc is None or self._proc.pid is None:
            raise AsrError(f"{self.spec.engine}: the ASR worker is not running")
        return self._proc.pid

    async def started(self) -> bool:
        """Wait for `start` (run by whoever called it) to end; whether the worker runs."""
        await self._start_done.wait()
        return self._proc is not None and self._proc.is_alive()

    async def start(self) -> None:
        try:
            await self._start()
        finally:
            self._start_done.set()

    async def _start(self) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that runs pjsua's threads
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child, self.spec), name=f"asr-{self.spec.engine}",
                                 daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        self._loop = asyncio.get_running_loop()
        if not await asyncio.to_thread(parent.poll, self._timeout):
            self.close()
            raise AsrError(f"{self.spec.engine}: the ASR worker did not load {self.spec.model} within "
                           f"{self._timeout:.0f} s")
        try:
            kind, detail = parent.recv()
        except EOFError:
            kind, detail = "error", f"{self.spec.engine}: the ASR worker process died loading {self.spec.model}"
        if kind != "ready":
            self.close()
            raise AsrError(str(detail))
        threading.Thread(target=self._receive, args=(parent, self._loop), name=f"asr-{self.spec.engine}-rx",
                         daemon=True).start()

    def _receive(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                rid, result, timing = conn.recv()
            except (EOFError, OSError, TypeError):  # TypeError: closed by close() while waiting
                if not loop.is_closed():
                    loop.call_soon_threadsafe(self._fail_all)
                return
            try:
                loop.call_soon_threadsafe(self._resolve, rid, result, timing)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _resolve(self, rid: int, result: object, timing: PassTiming) -> None:
        fut = self._pending.pop(rid, None)
        if fut is None or fut.done():
            return
        if isinstance(result, Exception):
            fut.set_exception(result)
        else:
            fut.set_result((result if isinstance(result, Transcript) else None, timing))

    def _fail_all(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(AsrError(f"{self.spec.engine}: the ASR worker process died"))
        self._pending.clear()

    async def transcribe(self, stream: str, audio: Audio, final: bool, hint: Transcript | None = None
                         ) -> Transcript | None:
        return (await self.transcribe_timed(stream, audio, final, hint))[0]

    async def transcribe_timed(self, stream: str, audio: Audio, final: bool, hint: Transcript | None = None
                               ) -> tuple[Transcript | None, PassTiming]:
        """`transcribe`, and how long the request waited in the child's queue and ran there."""
        if self._conn is None or self._proc is None or not self._proc.is_alive():
            raise AsrError(f"{self.spec.engine}: the ASR worker is not running")
        rid = next(self._ids)
        fut: asyncio.Future[tuple[Transcript | None, PassTiming]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        req = AsrRequest(rid, stream, audio, final, hint)
        with self._send_lock:
            self._conn.send(req)
        try:
            return await fut
        finally:
            self._pending.pop(rid, None)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            self._proc.join(timeout=2)
            if self._proc.is_alive():
                self._proc.kill()
            self._proc = None
