"""A scripted OpenAI-compatible chat-completions server for tests: real HTTP/1.1 on 127.0.0.1, own thread.

    with LlmServer() as server:
        server.script(text_reply(["Hel", "lo."], delay_s=0.05), error_reply(500, "boom"))
        ... point the client at server.base_url ...
        assert server.requests[0].body["stream"] is True
        assert server.wait_disconnect(1.0)

Each POST to `/v1/chat/completions` takes the next scripted `Reply`; the server records each request and every
client disconnect that happens before a reply is complete.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from tests.servers.threaded import ThreadedServer

PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Reply:
    """One scripted response: SSE `data:` payloads sent `delay_s` apart (the first after `delay_s` too),
    or an HTTP error with `body`, or a hang before or after the response headers."""

    data: Sequence[str] = ()
    delay_s: float = 0.0
    status: int = 200
    body: str = ""
    hang: Literal["before_headers", "after_headers"] | None = None


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    """Lower-case names."""
    body: Any


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
    """A `chat.completion.chunk` payload with one choice."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]})


def text_reply(chunks: Sequence[str], delay_s: float = 0.0, finish_reason: str = "stop") -> Reply:
    first = [chunk({"role": "assistant", "content": ""})]
    body = [chunk({"content": c}) for c in chunks]
    return Reply([*first, *body, chunk({}, finish_reason), "[DONE]"], delay_s)


def tool_reply(calls: Sequence[tuple[str, str, Sequence[str]]], delay_s: float = 0.0) -> Reply:
    """Tool calls (id, name, argument fragments), streamed one after the other as OpenAI does."""
    data = [chunk({"role": "assistant", "content": None})]
    for index, (call_id, name, fragments) in enumerate(calls):
        head = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        data.append(chunk({"tool_calls": [head]}))
        data += [chunk({"tool_calls": [{"index": index, "function": {"arguments": f}}]}) for f in fragments]
    return Reply([*data, chunk({}, "tool_calls"), "[DONE]"], delay_s)


def error_reply(status: int, body: str) -> Reply:
    return Reply(status=status, body=body)


def hang_reply(when: Literal["before_headers", "after_headers"] = "after_headers") -> Reply:
    """Accept the request and never send a token (until the client leaves)."""
    return Reply(hang=when)


class LlmServer(ThreadedServer):
    """Context manager: serves scripted replies on a free port until exit."""

    def __init__(self) -> None:
        super().__init__("llm-server")
        self.requests: list[Request] = []
        self.disconnects: list[float] = []
        """`time.monotonic()` of each disconnect before a reply was complete."""
        self._replies: deque[Reply] = deque()
        self._disconnected = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        self._replies.extend(replies)

    def wait_disconnect(self, timeout_s: float) -> bool:
        """Whether a client left mid-reply (now or within `timeout_s`)."""
        return self._disconnected.wait(timeout_s)

    @asynccontextmanager
    async def _listen(self) -> AsyncIterator[int]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            server.close()  # no wait_closed: from Python 3.12 it waits for hanging replies

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:  # one request per connection (responses say `Connection: close`), as simple as HTTP/1.1 allows
            if (request := await _read_request(reader)) is not None:
                self.requests.append(request)
                await self._respond(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _respond(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Send the next reply; False when the client left before its end."""
        if request.path != PATH:
            await _send_plain(writer, 404, f"llm server: no route {request.path}")
        elif not self._replies:
            await _send_plain(writer, 500, "llm server: no scripted reply left")
        elif (reply := self._replies.popleft()).status != 200:
            await _send_plain(writer, reply.status, reply.body)
        elif not await _send_events(reply, reader, writer):
            self.disconnects.append(time.monotonic())
            self._disconnected.set()
            return False
        return True


async def _send_events(reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Stream the reply (or hang); False when the client left first."""
    left = asyncio.ensure_future(reader.read(1))  # b"": the client closed the connection
    try:
        if reply.hang != "before_headers":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                         b"Connection: close\r\n\r\n")
        if reply.hang is None and await _stream(reply, writer, left):
            return True
        await left
    except ConnectionError:
        pass
    finally:
        left.cancel()
        await asyncio.gather(left, return_exceptions=True)
    return False


async def _stream(reply: Reply, writer: asyncio.StreamWriter, left: asyncio.Future[bytes]) -> bool:
    """Send the reply's events; False if the client left first."""
    for payload in reply.data:
        await asyncio.wait([left], timeout=reply.delay_s)
        if left.done():
            return False
        writer.write(_chunked(f"data: {payload}\n\n"))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    line = await reader.readline()
    if not line:
        return None
    _method, path, _version = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    data = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(path, headers, json.loads(data) if data else None)


async def _send_plain(writer: asyncio.StreamWriter, status: int, body: str) -> None:
    data = body.encode()
    head = (f"HTTP/1.1 {status} Scripted\r\nContent-Type: text/plain\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n")
    writer.write(head.encode() + data)
    await writer.drain()


def _chunked(text: str) -> bytes:
    data = text.encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"
