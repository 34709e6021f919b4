"""The WebRTC softphone through a running voicegate, with a real WebRTC peer (aiortc) in the page's place: it
signals as the page does (with the page's token), sends a recording as Opus and records what it hears."""

from __future__ import annotations

import asyncio
import fractions
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from media.resample import resample
from telephony.simulator import measure as wire
from telephony.simulator.measure import echo_lag
from tests import audio
from tests.integration.peers import Gateway, free_port, gateway_config, start_gateway
from tests.integration.test_media_stream import prompt, speech_s

pytestmark = pytest.mark.timeout(120)
RATE = 48000
TOKEN = "phone-token-for-tests"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port, http_port = free_port(), free_port()
    os.environ["VG_TEST_PHONE_TOKEN"] = TOKEN  # the gateway subprocess inherits it
    webrtc = {"port": http_port, "agent": "echo", "token_env": "VG_TEST_PHONE_TOKEN"}
    g = start_gateway(gateway_config(port, transports={"webrtc": webrtc}), tmp_path_factory.mktemp("gw-rtc"), port)
    g.http_port = http_port  # type: ignore[attr-defined]
    yield g
    assert g.stop() == 0


class _Caller(MediaStreamTrack):
    kind = "audio"

    def __init__(self, x16: np.ndarray, speak_at_s: float, seconds: float) -> None:
        super().__init__()
        n = int(seconds * RATE)
        self.pcm = np.zeros(n, dtype=np.int16)
        x48 = np.frombuffer(resample(audio.to_pcm(x16), 16000, RATE), dtype="<i2")
        at = int(speak_at_s * RATE)
        self.pcm[at : at + len(x48)] = x48[: max(0, n - at)]
        self.t0: float | None = None
        self.i = 0

    async def recv(self) -> AudioFrame:
        if self.t0 is None:
            self.t0 = time.monotonic()
        await asyncio.sleep(max(0.0, self.t0 + self.i * 0.02 - time.monotonic()))
        chunk = self.pcm[self.i * 960 : (self.i + 1) * 960]
        chunk = np.pad(chunk, (0, 960 - len(chunk)))
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self.i * 960, fractions.Fraction(1, RATE)
        self.i += 1
        return frame


@dataclass
class Phone:
    sent: np.ndarray
    heard: np.ndarray
    events: list[dict[str, Any]] = field(default_factory=list)
    agent: str = ""


async def phone_call(port: int, to: str, x16: np.ndarray, seconds: float, speak_at_s: float = 0.0,
                     keys: tuple[tuple[float, str], ...] = ()) -> Phone:
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]  # as the server does on loopback
    caller = _Caller(x16, speak_at_s, seconds)
    pc = RTCPeerConnection()
    pc.addTrack(caller)
    heard = np.zeros(int((seconds + 1) * RATE), dtype=np.int16)
    out = Phone(np.zeros(0), np.zeros(0))

    async def listen(track: MediaStreamTrack) -> None:
        """Each frame at its RTP time, from when the first one arrived (arrival times jitter; RTP times do not)."""
        first: tuple[int, int] | None = None
        try:
            while True:
                f = await track.recv()
                assert isinstance(f, AudioFrame) and f.pts is not None
                a = f.to_ndarray().reshape(-1, len(f.layout.channels)).mean(axis=1).astype(np.int16)
                if first is None:
                    first = (f.pts, int((time.monotonic() - (caller.t0 or time.monotonic())) * RATE))
                pos = first[1] + f.pts - first[0]
                end = min(pos + len(a), len(heard))
                if pos >= 0:
                    heard[pos:end] = a[: end - pos]
        except MediaStreamError:
            pass

    listeners: list[asyncio.Task[None]] = []
    pc.on("track", lambda t: listeners.append(asyncio.ensure_future(listen(t))))
    await pc.setLocalDescription(await pc.createOffer())
    async with connect(f"ws://127.0.0.1:{port}/phone/ws?token={TOKEN}") as ws:
        await ws.send(json.dumps({"type": "call", "to": to, "sdp": pc.localDescription.sdp}))
        answer = json.loads(await ws.recv())
        assert answer["type"] == "answer", answer
        out.agent = answer["agent"]
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))

        async def events() -> None:
            async for raw in ws:
                out.events.append(json.loads(raw))

        ev = asyncio.ensure_future(events())
        t0 = time.monotonic()
        for at, digit in keys:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            await ws.send(json.dumps({"type": "dtmf", "digit": digit}))
        await asyncio.sleep(max(0.0, t0 + seconds - time.monotonic()))
        await ws.send(json.dumps({"type": "hangup"}))
        async with asyncio.timeout(10):
            await ev
    await pc.close()
    for t in listeners:
        t.cancel()
    to16 = lambda x: audio.to_array(resample(x.tobytes(), RATE, 16000))  # noqa: E731
    out.sent, out.heard = to16(caller.pcm), to16(heard[: len(caller.pcm)])
    return out


def test_the_page_is_served_with_its_token_only(gw: Gateway) -> None:
    base = f"http://127.0.0.1:{gw.http_port}"  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"{base}/phone?token={TOKEN}", timeout=5) as r:
        page = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
    assert '<button id="call">Call</button>' in page and "RTCPeerConnection" in page
    for path, code in (("/phone", 401), (f"/phone?token={TOKEN}x", 401), ("/phone?token=", 401),
                       (f"/elsewhere?token={TOKEN}", 404)):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}{path}", timeout=5)
        assert e.value.code == code, path


def test_signalling_without_the_token_is_refused(gw: Gateway) -> None:
    async def signal(token: str) -> None:
        async with connect(f"ws://127.0.0.1:{gw.http_port}/phone/ws?token={token}"):  # type: ignore[attr-defined]
            pass

    for token in ("", "wrong"):
        with pytest.raises(InvalidStatus) as e:
            asyncio.run(signal(token))
        assert e.value.response.status_code == 401, token
    assert not [e for e in gw.events("call_answered") if e.get("transport") == "webrtc"], "a call got through"


def test_echo_over_webrtc_returns_the_callers_audio(gw: Gateway) -> None:
    res = asyncio.run(phone_call(gw.http_port, "echo", prompt("vm-goodbye"), 5.0, speak_at_s=1.0))  # type: ignore[attr-defined]
    lag_ms, peak = echo_lag(res.sent, res.heard)
    print(f"webrtc echo: lag {lag_ms:.0f} ms, correlation {peak:.2f}")
    assert res.agent == "echo" and peak > 0.5 and lag_ms < 300, (lag_ms, peak)
    end = gw.wait_event("call_end", 10, agent="echo", transport="webrtc")
    assert end["reason"] == "hangup" and end["codec"] == "opus/48000" and end["frames_in"] > 200, end


def test_demo_speaks_and_the_page_sees_its_events(gw: Gateway) -> None:
    res = asyncio.run(phone_call(gw.http_port, "demo", np.zeros(1), 14.0, keys=((8.5, "2"),)))  # type: ignore[attr-defined]
    assert res.agent == "demo"
    assert speech_s(res.heard[: 8 * 16000]) > 4.0, "the greeting and menu are not speech"
    said = [e["text"] for e in res.events if e.get("name") == "agent_say"]
    assert said[0] == "Hello, and thank you for calling voicegate." and any(t.startswith("The time here") for t in said)
    assert any(e.get("name") == "dtmf" and e.get("digit") == "2" for e in res.events)
    assert res.events[-1] == {"type": "event", "name": "call_end", "reason": "hangup"}, res.events[-1]


def test_caller_speech_stops_the_agent_over_webrtc(gw: Gateway, clips) -> None:
    """The caller speaks 2 s into the `long` agent's message: its audio stops, and stays stopped."""
    res = asyncio.run(phone_call(gw.http_port, "long", clips.caller, 5.0, speak_at_s=2.0))  # type: ignore[attr-defined]
    start = 100  # frames: 2.0 s
    first_sound = wire.caller_onset_frame(res.sent, start, -40.0)
    # within the second before: the message pauses between sentences
    heard_db = wire.frames_db(res.heard)
    assert wire.talking_before(heard_db, first_sound, frames=50), "the agent was not talking at the onset"
    reaction = wire.reaction_ms(res.sent, res.heard, start)
    print(f"webrtc barge-in: the agent's audio stopped {reaction:.0f} ms after the caller's onset")
    assert reaction <= 1000, reaction  # generous: both aiortc receivers hold 4 packets (about 200 ms together)
    last = wire.last_agent_frame(res.heard, wire.caller_onset_frame(res.sent, start))
    assert wire.agent_audio_after(res.heard, last + 1, 1.5) == 0.0, "agent audio came back after the barge-in"
    assert any(e.get("name") == "barge_in" for e in res.events), res.events
    end = gw.wait_event("call_end", 10, agent="long", transport="webrtc")
    assert end["barge_ins"] == 1, end
