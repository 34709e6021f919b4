"""A small order-status service for the business-tools demo: `GET /orders/<order_id>` answers JSON from SQLite.

    python examples/order_status/server.py --port 8090        # then call the `orders` route of voicegate.yaml

Known orders answer `{"found": true, "order_id", "status", "eta", "items"}`, unknown ones `{"found": false}` (a
200, so a flow can branch on it; a 500 or a timeout is what the gateway apologises for). With the
`X-Voicegate-Caller-Verified: true` header the service also says whether the order belongs to the caller
(`X-Voicegate-Caller`). It is the standard library's http.server and sqlite3 on purpose: a demo with no
dependencies, run next to the gateway.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SEED = Path(__file__).with_name("orders.sql")
_PATH = re.compile(r"/orders/([0-9A-Za-z-]{1,32})")


def open_db(seed: Path = SEED) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.executescript(seed.read_text())
    return db


def make_server(port: int, host: str = "127.0.0.1", db: sqlite3.Connection | None = None) -> ThreadingHTTPServer:
    conn = db or open_db()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            m = _PATH.fullmatch(self.path.split("?")[0])
            if m is None:
                self._send(404, {"error": f"no such resource {self.path}; use /orders/<order_id>"})
                return
            with lock:
                row = conn.execute("SELECT order_id, customer, status, eta, items FROM orders WHERE order_id = ?",
                                   (m.group(1),)).fetchone()
            if row is None:
                self._send(200, {"found": False, "order_id": m.group(1)})
                return
            body = {"found": True, "order_id": row[0], "status": row[2], "eta": row[3], "items": row[4]}
            if self.headers.get("X-Voicegate-Caller-Verified") == "true":
                body["callers_own"] = self.headers.get("X-Voicegate-Caller", "") == row[1]
            self._send(200, body)

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            print(json.dumps({"event": "order_request", "line": format % args}), flush=True)

    return ThreadingHTTPServer((host, port), Handler)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    server = make_server(args.port, args.host)
    print(json.dumps({"event": "order_service_ready", "url": f"http://{args.host}:{server.server_address[1]}"}),
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
