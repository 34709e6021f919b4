"""Config reload on SIGHUP under a running voicegate: a call in progress keeps its agent, the next call routes by
the new file; a broken file is refused with its file:line errors and the gateway keeps serving the last good one."""

from __future__ import annotations

import concurrent.futures
import signal
from pathlib import Path

import yaml

from tests.integration.peers import call, free_port, gateway_config, start_gateway


def test_sighup_reloads_routes_and_agents_without_dropping_calls(tmp_path: Path) -> None:
    port = free_port()
    cfg = yaml.safe_load(gateway_config(port))
    cfg["routes"].insert(0, {"match": "sales", "agent": "long"})
    gw = start_gateway(yaml.safe_dump(cfg), tmp_path, port)
    sales = f"sip:sales@127.0.0.1:{port}"
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(call, sales, "--duration", "40", timeout=60)
            old = gw.wait_event("call_answered", 15, agent="long")

            cfg["agents"]["fresh"] = {"type": "scripted", "voice": "en", "start": "a",
                                      "nodes": {"a": [{"say": "A fresh agent."}, {"hangup": "fresh_done"}]}}
            cfg["routes"][0] = {"match": "sales", "agent": "fresh"}
            cfg["trunks"] = {"late": {"registrar": f"sip:127.0.0.1:{free_port()}", "register": False,
                                      "username": "late", "password_env": "HOME"}}
            gw.config.write_text(yaml.safe_dump(cfg))
            gw.proc.send_signal(signal.SIGHUP)
            reloaded = gw.wait_event("config_reloaded", 30)
            assert reloaded["new_agents"] == ["fresh"] and reloaded["needs_restart"] == []
            assert reloaded["trunks"] == ["late"] and gw.wait_event("trunk_added", 5, trunk="late")

            second = call(sales, "--duration", "15")
            assert second["answered"] and second["remote_hangup"]
            gw.wait_event("call_end", 10, agent="fresh", reason="fresh_done")

            cfg["routes"][0]["match"] = "/(/"
            broken = yaml.safe_dump(cfg)
            gw.config.write_text(broken)
            gw.proc.send_signal(signal.SIGHUP)
            refused = gw.wait_event("config_reload_refused", 15)
            line = next(i for i, ln in enumerate(broken.splitlines(), 1) if "match: /(/" in ln)
            assert refused["errors"][0].startswith(f"{gw.config}:{line}: routes.0.match: bad regular expression")

            third = call(sales, "--duration", "15")
            assert third["remote_hangup"]
            assert len([e for e in gw.events("call_end") if e["agent"] == "fresh"]) == 2

            assert first.result()["remote_hangup"]  # the first call ran its old agent to its own end
            end = gw.wait_event("call_end", 10, call=old["call"])
            assert end["agent"] == "long" and end["reason"] == "done"
    finally:
        assert gw.stop() == 0, "\n".join(gw.lines[-20:])
