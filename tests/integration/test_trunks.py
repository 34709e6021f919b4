"""Trunks against a real Kamailio registrar: digest registration, refresh, a wrong password, registrars that fail or
never answer, a Kamailio restart, and calls Kamailio routes to the registered contact."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.kamailio import REALM, Kamailio
from tests.integration.peers import VENV_BIN, Gateway, call, free_port, gateway_config, start_gateway

PASSWORD = "s3cret-trunk"
DID = "+4930123"


class SilentRegistrar:
    """A UDP socket that takes REGISTERs and never answers (a registrar that is down or firewalled)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.packets: list[tuple[float, str]] = []
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            m = re.search(r"^CSeq:\s*(\d+) REGISTER", data.decode(errors="replace"), re.M | re.I)
            if m:
                self.packets.append((time.monotonic(), m.group(1)))

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture(scope="module")
def carrier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    k = Kamailio(free_port(), tmp_path_factory.mktemp("kamailio"), PASSWORD, "vgtrunk")
    k.start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def silent() -> Iterator[SilentRegistrar]:
    s = SilentRegistrar()
    yield s
    s.close()


@pytest.fixture(scope="module")
def trunk_gw(carrier: Kamailio, silent: SilentRegistrar, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Gateway]:
    os.environ.update(VG_TEST_TRUNK_PW=PASSWORD, VG_TEST_BAD_PW="not-the-password")
    registrar = f"sip:127.0.0.1:{carrier.port}"
    trunks = {
        "main": {"registrar": registrar, "username": "vgtrunk", "password_env": "VG_TEST_TRUNK_PW",
                 "realm": REALM, "expiry_s": 10, "routes": [{"match": DID, "agent": "echo"}]},
        "bad": {"registrar": registrar, "username": "badtrunk", "password_env": "VG_TEST_BAD_PW",
                "retry_min_s": 1, "retry_max_s": 60},
        "dead": {"registrar": f"sip:127.0.0.1:{free_port()}", "transport": "tcp", "username": "x",
                 "password_env": "VG_TEST_BAD_PW", "retry_min_s": 1, "retry_max_s": 60},
        "silent": {"registrar": f"sip:127.0.0.1:{silent.port}", "username": "y",
                   "password_env": "VG_TEST_BAD_PW"},
    }
    port = free_port()
    gw = start_gateway(gateway_config(port, trunks=trunks), tmp_path_factory.mktemp("gw-trunks"), port)
    yield gw
    assert gw.stop() == 0, "\n".join(gw.lines[-20:])


def states(gw: Gateway, trunk: str) -> list[dict[str, object]]:
    return [e for e in gw.events("trunk_state") if e["trunk"] == trunk]


def test_registers_after_a_digest_challenge_and_reports_it(trunk_gw: Gateway, carrier: Kamailio):
    ev = trunk_gw.wait_event("trunk_state", 10, trunk="main", state="registered")
    assert ev["code"] == 200 and ev["expires_s"] == 10
    log = [ln for ln in carrier.lines if "KAM" in ln and "vgtrunk" in ln]
    assert "challenge vgtrunk auth=<null>" in log[0], log[:3]  # first REGISTER has no credentials: 401
    assert any("registered vgtrunk" in ln for ln in log)
    out = subprocess.run([str(VENV_BIN / "voicegate"), "trunks", "--config", str(trunk_gw.config)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    row = next(ln for ln in out.stdout.splitlines() if ln.startswith("main "))
    assert "registered" in row and "200 OK" in row, out.stdout


def test_registration_is_refreshed_before_it_expires(trunk_gw: Gateway, carrier: Kamailio):
    first = trunk_gw.wait_event("trunk_state", 10, trunk="main", state="registered")
    refresh = trunk_gw.wait_event("trunk_state", 15, trunk="main", refresh=True)
    assert 0 < refresh["ts"] - first["ts"] < 10, "refreshed only after the 10 s registration ran out"
    assert len(carrier.log("registered vgtrunk")) >= 2


def test_wrong_password_marks_the_trunk_failed_and_backs_off(trunk_gw: Gateway):
    trunk_gw.wait_event("trunk_state", 15, trunk="bad", state="failed", failures=3)
    failed = [e for e in states(trunk_gw, "bad") if e["state"] == "failed"]
    assert failed[0]["code"] == 401 and failed[0]["reason"] == "Unauthorized"
    assert [e["retry_in_s"] for e in failed[:3]] == [1.0, 2.0, 4.0]
    assert not any(e["state"] == "registered" for e in states(trunk_gw, "bad"))


def test_refused_connection_backs_off_without_a_busy_loop(trunk_gw: Gateway):
    trunk_gw.wait_event("trunk_state", 15, trunk="dead", state="failed", failures=3)
    failed = [e for e in states(trunk_gw, "dead") if e["state"] == "failed"]
    gaps = [b["ts"] - a["ts"] for a, b in zip(failed, failed[1:], strict=False)]  # type: ignore[operator]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps
    assert failed[0]["code"] >= 400, failed[0]


def test_a_registrar_that_never_answers_gets_retransmissions_only(trunk_gw: Gateway, silent: SilentRegistrar):
    added = trunk_gw.wait_event("trunk_added", 10, trunk="silent")
    time.sleep(max(0.0, added["ts"] + 6.0 - time.time()))
    cseqs = {c for _, c in silent.packets}
    assert len(cseqs) == 1, silent.packets  # one REGISTER transaction, retransmitted by pjsip's timers
    assert 2 <= len(silent.packets) <= 6, silent.packets
    assert not any(e["state"] == "registered" for e in states(trunk_gw, "silent"))


def test_kamailio_routes_a_did_call_to_the_trunks_agent(trunk_gw: Gateway, carrier: Kamailio):
    trunk_gw.wait_event("trunk_state", 10, trunk="main", state="registered")
    res = call(f"sip:{DID}@127.0.0.1:{carrier.port}", "--duration", "2")
    assert res["status"] == 200 and res["answered"], res
    inc = trunk_gw.wait_event("call_incoming", 5, called=DID)
    assert inc["trunk"] == "main" and inc["source"].startswith("127.0.0.1:")
    end = trunk_gw.wait_event("call_end", 10, call=inc["call"])
    assert end["agent"] == "echo"
    assert carrier.log(f"invite {DID} to sip:vgtrunk@127.0.0.1:{trunk_gw.port}")


def test_re_registers_after_kamailio_restarts(trunk_gw: Gateway, carrier: Kamailio, tmp_path: Path):
    trunk_gw.wait_event("trunk_state", 10, trunk="main", state="registered")
    carrier.stop()
    restarted = time.time()
    fresh = Kamailio(carrier.port, tmp_path, PASSWORD, "vgtrunk")
    fresh.start()
    try:
        fresh.wait_log("registered vgtrunk", 15)  # the new process knows no contact until voicegate registers
        deadline = time.monotonic() + 5
        while not any(e["state"] == "registered" and e["ts"] > restarted for e in states(trunk_gw, "main")):
            assert time.monotonic() < deadline, states(trunk_gw, "main")[-3:]
            time.sleep(0.05)
        res = call(f"sip:{DID}@127.0.0.1:{carrier.port}", "--duration", "1")
        assert res["status"] == 200, res
        assert fresh.log(f"invite {DID}")
    finally:
        fresh.stop()
        carrier.start()  # the module's carrier again, for the tests after this one
