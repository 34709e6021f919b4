"""Commands to the running front door: JSON-RPC 2.0 over Kamailio's Unix datagram socket (`jsonrpcs` module).

The supervisor uses it to end the calls of a worker that died: Kamailio's `dialog` module knows each answered
call's worker (the `worker` profile, telephony/frontdoor.py), and `dlg.end_dlg` sends BYE both ways, so the caller
hears the call end instead of silence. The client binds its own datagram socket, to which Kamailio answers.
Debian's `kamcmd` speaks the other protocol (binrpc, `ctl` module) and would be one process per command; a
datagram and the json module are all a command needs here.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIRMED = (3, 4)
"""Dialog states of an answered call (waiting for its ACK, running); earlier ones are the INVITE's failover's."""


class RpcError(RuntimeError):
    """The front door refused a command, or did not answer it."""


@dataclass(frozen=True)
class Dialog:
    call_id: str
    h_entry: int
    h_id: int


def rpc(sock: Path, method: str, *params: str | int, timeout: float = 2.0) -> Any:
    """Run one RPC command on the Kamailio whose `jsonrpcs` datagram socket is `sock`; its result."""
    request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
    me = sock.with_name(f"rpc-client-{uuid.uuid4().hex[:8]}.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(me))
        try:
            s.settimeout(timeout)
            s.sendto(json.dumps(request).encode(), str(sock))
            answer = json.loads(s.recv(1 << 20))
        except (OSError, ValueError) as e:
            raise RpcError(f"front door RPC {method} over {sock}: {e}") from None
        finally:
            os.unlink(me)
    if "error" in answer:
        raise RpcError(f"front door RPC {method}: {answer['error'].get('message', answer['error'])}")
    return answer.get("result")


def answered(profile_list: Any) -> list[Dialog]:
    """The answered calls in a `dlg.profile_list` result (a list with one object per dialog; none when empty)."""
    return [Dialog(str(d["call-id"]), int(d["h_entry"]), int(d["h_id"]))
            for d in profile_list or [] if isinstance(d, Mapping) and int(d.get("state", 0)) in CONFIRMED]


def end_worker_calls(sock: Path, worker: str) -> list[str]:
    """Send BYE both ways for every answered call in worker `worker`'s profile (its dispatcher URI); the Call-IDs
    ended. A call that ended meanwhile is skipped."""
    ended = []
    for d in answered(rpc(sock, "dlg.profile_list", "worker", worker)):
        try:
            rpc(sock, "dlg.end_dlg", d.h_entry, d.h_id)
        except RpcError:
            continue
        ended.append(d.call_id)
    return ended
