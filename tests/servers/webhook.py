"""A local HTTP webhook for tool tests (stdlib http.server on a free port of 127.0.0.1, its own thread).

It answers every request with `reply` (JSON), after `delay_s`, with status `status`; `raw` sends a body as it is
(for invalid JSON). Each request is kept in `requests` (method, path, query, headers, JSON body).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Webhook:
    reply: Any = field(default_factory=dict)
    status: int = 200
    delay_s: float = 0.0
    raw: bytes | None = None
    requests: list[Seen] = field(default_factory=list)
    port: int = 0

    def __enter__(self) -> Self:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                url = urlsplit(self.path)
                hook.requests.append(Seen(self.command, url.path, dict(parse_qsl(url.query)),
                                          {k.lower(): v for k, v in self.headers.items()}, body))
                time.sleep(hook.delay_s)
                data = hook.raw if hook.raw is not None else json.dumps(hook.reply).encode()
                try:
                    self.send_response(hook.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer  # noqa: N815 (http.server names)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
