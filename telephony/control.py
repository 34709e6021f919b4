"""The control endpoint: `POST /calls` with JSON `{"number", "agent", "trunk"?, "ring_s"?, "amd"?}` originates a
call (`amd`: `{"machine": "hangup" | "message", "message"}`, telephony/outbound.py); `POST /calls/<Call-ID>/pcap`
asks for a live call's pcap (telephony/pcap.py), written when the call ends: 202 with `{"call", "pcap"}`.

HTTP on a thread (the standard library's WSGI server, as the metrics endpoint), authenticated by a bearer token
compared in constant time. Each request hands the call to the gateway's loop and waits for the INVITE to be out:
201 with `{"call", "uri", "trunk", "caller_id", "agent"}`, or the refusal's status with `{"error"}`.

With workers, worker 0 serves this endpoint and asks the other workers' (`pcap_only`, on loopback) for the pcap of
a call it does not hold (`ask_worker`, telephony/workers.py `control_peers`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Iterable
from http import HTTPStatus
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.exposition import ThreadingWSGIServer

from telephony.errors import VoicegateError
from telephony.logs import event
from telephony.outbound import AmdOptions, DialPlan, DialRefusedError
from telephony.pcap import CaptureRefusedError

MAX_BODY = 4096
PEER_TIMEOUT_S = 3.0
"""How long worker 0 waits for another worker's answer about a call."""
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Originator(Protocol):
    def originate(self, number: str, agent: str, trunk: str | None = None, ring_s: float = 60.0,
                  amd: AmdOptions | None = None) -> Coroutine[Any, Any, DialPlan]: ...

    def capture(self, call_id: str) -> Coroutine[Any, Any, str]: ...


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass


def _reply(start_response: Callable[..., Any], status: int, body: dict[str, Any],
           headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers])
    return [data]


def parse_request(body: bytes) -> tuple[str, str, str | None, float, AmdOptions | None]:
    """number, agent, trunk, ring time and call-progress options of a `POST /calls` body; raise
    DialRefusedError(400) naming the bad field."""
    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DialRefusedError(400, f"the body is not JSON: {e}") from None
    if not isinstance(req, dict):
        raise DialRefusedError(400, "the body must be a JSON object")
    unknown = sorted(set(req) - {"number", "agent", "trunk", "ring_s", "amd"})
    if unknown:
        raise DialRefusedError(400, f"unknown field {unknown[0]!r} (fields: number, agent, trunk, ring_s, amd)")
    for name in ("number", "agent"):
        if not isinstance(req.get(name), str) or not req[name]:
            raise DialRefusedError(400, f"{name} is required (a string)")
    trunk = req.get("trunk")
    if trunk is not None and not isinstance(trunk, str):
        raise DialRefusedError(400, "trunk must be a string")
    ring_s = req.get("ring_s", 60.0)
    if isinstance(ring_s, bool) or not isinstance(ring_s, int | float) or not 1 <= ring_s <= 300:
        raise DialRefusedError(400, "ring_s must be a number of seconds from 1 to 300")
    amd = req.get("amd")
    if amd is not None and (not isinstance(amd, dict) or set(amd) - {"machine", "message"}
                            or not all(isinstance(v, str) for v in amd.values())):
        raise DialRefusedError(400, 'amd must be {"machine": "hangup" | "message", "message": "text"}')
    return req["number"], req["agent"], trunk, float(ring_s), None if amd is None else AmdOptions(**amd)


def ask_worker(port: int, call_id: str, token: str) -> tuple[int, dict[str, Any]]:
    """`POST /calls/<Call-ID>/pcap` to another worker's control endpoint on loopback: its status and JSON body.
    Raises OSError when it does not answer (a worker restarting)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/calls/{urllib.parse.quote(call_id, safe='@')}/pcap",
                                 data=b"", method="POST", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=PEER_TIMEOUT_S) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read())
        except ValueError:
            body = {"error": f"HTTP {e.code}"}
        return int(e.code), body if isinstance(body, dict) else {"error": str(body)}


def control_app(gateway: Originator, loop: asyncio.AbstractEventLoop, token: str, pcap_only: bool = False) -> WsgiApp:
    expected = f"Bearer {token}".encode()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        source = f"{environ.get('REMOTE_ADDR', '')}"
        pcap = path.startswith("/calls/") and path.endswith("/pcap") and len(path) > len("/calls//pcap")
        if path != "/calls" and not pcap:
            return _reply(start_response, 404, {"error": f"no {path}: POST /calls originates a call, "
                                                         "POST /calls/<Call-ID>/pcap captures one"})
        if not hmac.compare_digest(environ.get("HTTP_AUTHORIZATION", "").encode(), expected):
            event("control_unauthorized", path=path, source=source)
            return _reply(start_response, 401, {"error": "a valid Authorization: Bearer token is required"},
                          [("WWW-Authenticate", 'Bearer realm="voicegate"')])
        if method != "POST":
            return _reply(start_response, 405, {"error": f"{method} {path}: only POST"}, [("Allow", "POST")])
        if pcap:
            return _capture(gateway, loop, path.removeprefix("/calls/").removesuffix("/pcap"), start_response)
        if pcap_only:
            return _reply(start_response, 404, {"error": "this worker serves only POST /calls/<Call-ID>/pcap: "
                                                         "place calls through worker 0's control endpoint"})
        size = environ.get("CONTENT_LENGTH") or "0"
        try:
            if not size.isdigit() or int(size) > MAX_BODY:
                raise DialRefusedError(413 if size.isdigit() else 400,
                                       f"Content-Length {size}: at most {MAX_BODY} bytes")
            number, agent, trunk, ring_s, amd = parse_request(environ["wsgi.input"].read(int(size)))
            fut = asyncio.run_coroutine_threadsafe(gateway.originate(number, agent, trunk, ring_s, amd), loop)
            plan = fut.result(15.0)
        except DialRefusedError as e:
            return _reply(start_response, e.status, {"error": e.message})
        except TimeoutError:
            return _reply(start_response, 503, {"error": "the gateway did not place the call within 15 s"})
        return _reply(start_response, 201, {"call": plan.call_id, "uri": plan.uri, "trunk": plan.trunk,
                                            "caller_id": plan.caller_id, "agent": plan.agent})

    return app


def _capture(gateway: Originator, loop: asyncio.AbstractEventLoop, call_id: str,
             start_response: Callable[..., Any]) -> list[bytes]:
    try:
        path = asyncio.run_coroutine_threadsafe(gateway.capture(call_id), loop).result(15.0)
    except CaptureRefusedError as e:
        return _reply(start_response, e.status, {"error": e.message})
    except TimeoutError:
        return _reply(start_response, 503, {"error": "the gateway did not answer within 15 s"})
    return _reply(start_response, 202, {"call": call_id, "pcap": path})


class ControlServer:
    """The control endpoint's HTTP server, on a daemon thread."""

    def __init__(self, gateway: Originator, loop: asyncio.AbstractEventLoop, listen: str, port: int,
                 token: str, pcap_only: bool = False) -> None:
        try:
            self._server = make_server(listen, port, control_app(gateway, loop, token, pcap_only),
                                       ThreadingWSGIServer, handler_class=_QuietHandler)
        except OSError as e:
            raise VoicegateError(f"control: cannot listen on {listen}:{port}: {e.strerror or e}") from None
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="control-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
