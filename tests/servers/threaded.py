"""The lifecycle the local protocol servers share: their own thread and asyncio loop, serving on a free port of
127.0.0.1 from `__enter__` until `__exit__`."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
from contextlib import AbstractAsyncContextManager
from typing import Self


class ThreadedServer(abc.ABC):
    """Context manager; a subclass says how to listen (`_listen`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name=name, daemon=True)

    @abc.abstractmethod
    def _listen(self) -> AbstractAsyncContextManager[int]:
        """Listen on 127.0.0.1 port 0; the context gives the port taken and stops serving on exit."""

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(5.0):
            raise RuntimeError(f"{self.name} did not start within 5 s")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving (its connections close), at most once; a test may stop a server before its `with` ends."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: stopped already
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5.0)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self._listen() as port:
            self.port = port
            self._ready.set()
            await self._stop.wait()
