"""The `/phone` page in headless Chromium (Debian `chromium`), driven over the DevTools protocol: its fake
microphone plays a recording; it calls the demo agent (the page shows what the agent says, and a screenshot is
taken) and the echo agent (the caller's audio comes back: audio flowed both ways)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests import audio
from tests.integration.peers import Gateway, free_port, gateway_config, start_gateway
from tests.integration.test_media_stream import prompt

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port, http_port = free_port(), free_port()
    g = start_gateway(gateway_config(port, transports={"webrtc": {"port": http_port, "agent": "echo"}}),
                      tmp_path_factory.mktemp("gw-page"), port)
    g.http_port = http_port  # type: ignore[attr-defined]
    yield g
    assert g.stop() == 0


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Chromium with a fake microphone reading a recording; yields the page target's DevTools WebSocket URL."""
    tmp = tmp_path_factory.mktemp("chromium")
    wav = audio.write_wav(tmp / "caller.wav", audio.scale_to_db(prompt("vm-goodbye"), -20.0))
    port = free_port()
    proc = subprocess.Popen(
        ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'profile'}",
         f"--remote-debugging-port={port}", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
         f"--use-file-for-fake-audio-capture={wav}", "--allow-loopback-in-peer-connection",
         "--autoplay-policy=no-user-gesture-required", "--window-size=900,800", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.2)
        yield str(pages[0]["webSocketDebuggerUrl"])
    finally:
        proc.terminate()
        proc.wait(10)


class Cdp:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def __call__(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self.ids)
        await self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == n:
                assert "error" not in msg, msg
                return dict(msg["result"])

    async def js(self, expr: str) -> Any:
        r = await self("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in r, r
        return r["result"].get("value")


INBOUND_ENERGY = """(async () => { if (!pc) return null; const s = await pc.getStats(); let e = null;
  s.forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'audio') e = r.totalAudioEnergy; }); return e; })()"""


async def _call(cdp: Cdp, base: str, to: str, seconds: float) -> tuple[str, float, str]:
    await cdp("Page.navigate", url=f"{base}/phone")
    while await cdp.js("document.readyState") != "complete":
        await asyncio.sleep(0.1)
    await cdp.js(f"document.getElementById('to').value = {json.dumps(to)}; document.getElementById('call').click()")
    await asyncio.sleep(seconds)
    state = await cdp.js("document.getElementById('state').textContent")
    energy = await cdp.js(INBOUND_ENERGY)
    events = await cdp.js("document.getElementById('events').textContent")
    return str(state), float(energy or 0.0), str(events)


def test_the_page_calls_the_demo_and_echo_agents(gw: Gateway, browser: str, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{gw.http_port}"  # type: ignore[attr-defined]

    async def run() -> tuple[tuple[str, float, str], tuple[str, float, str], bytes]:
        async with connect(browser, max_size=None) as ws:
            cdp = Cdp(ws)
            demo = await _call(cdp, base, "demo", 6.0)
            shot = base64.b64decode((await cdp("Page.captureScreenshot", format="png"))["data"])
            await cdp.js("document.getElementById('hangup').click()")
            echo = await _call(cdp, base, "echo", 5.0)
            await cdp.js("document.getElementById('hangup').click()")
            return demo, echo, shot

    demo, echo, shot = asyncio.run(run())
    (tmp_path / "phone.png").write_bytes(shot)
    print(f"phone page screenshot: {tmp_path / 'phone.png'}; inbound audio energy demo {demo[1]:.3f}, "
          f"echo {echo[1]:.3f}")
    assert demo[0] == "in call with demo" and "agent: Hello, and thank you for calling voicegate." in demo[2], demo
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
    assert demo[1] > 0.01, "no agent audio reached the browser"
    assert echo[0] == "in call with echo" and echo[1] > 0.01, "the browser's microphone did not come back"
    ends = [gw.wait_event("call_end", 10, agent=a, transport="webrtc") for a in ("demo", "echo")]
    assert all(e["frames_in"] > 150 for e in ends), ends
