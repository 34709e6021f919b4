"""The Gemini Live agent against the local protocol server, driven through a real CallSession and CallMedia on a
real-time 20 ms clock: caller audio in, what the caller would hear out."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pytest

from agents.base import Handover
from agents.gemini_live import RESUME_TEXT, GeminiLiveAgent, GeminiLiveConfig, GeminiLiveFactory
from agents.session import CallSession, SessionTimeouts, TakesOver
from agents.speech.tts import PromptCache
from media.frames import FRAME_SAMPLES, SILENCE, level_dbfs
from media.pipeline import CallMedia
from tests import audio
from tests.integration.peers import free_port
from tests.servers.gemini_live import AFTER_TOOL, GeminiLiveServer, Reply, Session
from tests.unit.test_openai_realtime import Takeover

LONG = ("This is a long answer from the test model, so that the caller has time to talk over it. It goes on for "
        "a while, and a caller who interrupts it should not hear the rest.")
OPENING = "Hello, and welcome. Let me tell you about our opening hours today."


@pytest.fixture(scope="module")
def server() -> Iterator[GeminiLiveServer]:
    with GeminiLiveServer() as s:
        s.render(LONG)
        s.render(OPENING)
        yield s


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return audio.scale_to_db(audio.trim(audio.piper("Could you help me with my booking, please?")), -20.0)


class Actions:
    def __init__(self) -> None:
        self.hung_up = asyncio.Event()
        self.transfers: list[str] = []
        self.dtmf: list[str] = []
        self.session: CallSession | None = None

    def hangup(self) -> None:
        self.hung_up.set()

    def transfer(self, uri: str, attended: bool = False) -> None:
        self.transfers.append(uri)
        assert self.session is not None
        asyncio.get_running_loop().call_later(0.2, self.session.on_transfer_result, 603)

    def send_dtmf(self, digits: str) -> None:
        self.dtmf.append(digits)


@dataclass
class Call:
    session: CallSession
    actions: Actions
    t0: float
    """time.time() of the first frame."""
    out: list[bytes] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    flushes: int = 0
    sessions: list[Session] = field(default_factory=list)

    def speech_s(self, start_s: float, end_s: float) -> float:
        """Seconds of agent audio the caller heard between these call times."""
        frames = self.out[int(start_s * 50) : int(end_s * 50)]
        return sum(level_dbfs(f) > -50 for f in frames) * 0.02

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.logs if e["event"] == name]

    def at(self, wall: float) -> float:
        return wall - self.t0


class AgentLog(logging.Handler):
    def __init__(self, logs: list[dict[str, Any]]) -> None:
        super().__init__(logging.INFO)
        self.logs = logs

    def emit(self, record: logging.LogRecord) -> None:
        self.logs.append(json.loads(record.getMessage()))


async def _call(server: GeminiLiveServer, seconds: float, caller: list[tuple[float, np.ndarray]],
                takeover: TakesOver | None = None, **options: Any) -> Call:
    cfg = GeminiLiveConfig.model_validate({
        "type": "gemini_live", "url": server.url, "api_key_env": None, "model": "models/test-live",
        "greeting": "Greet the caller.", "transfer_target": "sip:operator@example.com", **options})
    prompts = PromptCache()
    factory = GeminiLiveFactory("gemini", cfg, prompts)
    factory.fallback = takeover
    await factory.prepare()
    actions = Actions()
    logs: list[dict[str, Any]] = []
    session: CallSession

    def emit(ev: Any) -> None:
        session.on_media_event(ev)

    media = CallMedia(emit)
    session = CallSession("c1", "caller", "gemini", factory, media, actions, prompts,
                          lambda name, **f: logs.append({"ts": time.time(), "event": name, **f}),
                          SessionTimeouts(silence_reprompt_s=60, silence_hangup_s=120))
    actions.session = session
    flush = session.flush_playout
    call = Call(session, actions, time.time(), logs=logs)
    n_sessions = len(server.sessions)

    def counted_flush() -> None:
        call.flushes += 1
        flush()

    session.flush_playout = counted_flush  # type: ignore[method-assign]
    total = int(seconds * 50)
    inbound = np.zeros(total * FRAME_SAMPLES, np.float32)
    for at, x in caller:
        i = int(at * 16000)
        inbound[i : i + len(x)] += x[: len(inbound) - i]

    async def clock() -> None:
        start = time.monotonic()
        call.t0 = time.time()
        for k in range(total):
            await asyncio.sleep(max(0.0, start + k * 0.02 - time.monotonic()))
            now = time.monotonic()
            frame = inbound[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES]
            media.on_inbound(now, audio.to_pcm(frame) if frame.any() else SILENCE)
            call.out.append(media.next_outbound(now))

    handler = AgentLog(logs)
    agent_log = logging.getLogger("voicegate.gemini_live")
    agent_log.addHandler(handler)
    agent_log.setLevel(logging.INFO)
    run = asyncio.create_task(session.run())
    try:
        await asyncio.wait({asyncio.create_task(clock()), asyncio.create_task(actions.hung_up.wait())},
                           return_when=asyncio.FIRST_COMPLETED)
        session.on_hangup("test")
        await asyncio.wait_for(run, 5)
    finally:
        agent_log.removeHandler(handler)
    await asyncio.sleep(0.1)  # the server sees the close
    call.sessions = server.sessions[n_sessions:]
    return call


def call(server: GeminiLiveServer, seconds: float, caller: list[tuple[float, np.ndarray]] | None = None,
         takeover: TakesOver | None = None, **options: Any) -> Call:
    before = len(server.violations)
    c = asyncio.run(_call(server, seconds, caller or [], takeover, **options))
    assert server.violations[before:] == []
    return c


@pytest.mark.timeout(60)
def test_gateway_owned_turns_stream_both_ways_and_time_each_turn(server, question):
    server.script(Reply("Hello, how can I help?"), Reply("Sure, I can help with your booking."))
    c = call(server, 8.0, [(3.0, question)])
    [s] = c.sessions
    rt = s.setup["realtimeInputConfig"]
    assert rt["automaticActivityDetection"]["disabled"] is True and rt["turnCoverage"] == "TURN_INCLUDES_ALL_INPUT"
    assert s.setup["sessionResumption"] == {} and s.setup["contextWindowCompression"] == {"slidingWindow": {}}
    assert s.texts == ["Greet the caller."]
    assert set(s.audio_chunk_ms) <= {20.0, 40.0} and s.audio_in_ms > 7000  # 20 ms: flushed before an activity signal
    assert s.turns == 1 and s.replies == ["Hello, how can I help?", "Sure, I can help with your booking."]
    assert c.speech_s(0, 3.0) > 0.8, "greeting not heard"
    end = 3.0 + len(question) / 16000
    assert c.speech_s(end, 8.0) > 0.8, "reply not heard"
    greeting, turn = c.session.record.turns
    assert greeting["trigger"] == "greeting" and turn["trigger"] == "speech"
    assert turn["text"] == "Sure, I can help with your booking." and turn["interrupted_by"] is None
    # from the end of the caller's speech: the gateway's 300 ms hangover, then the server answers at once (bounds
    # generous for a loaded machine: bench.s2s has the figures)
    assert 250 < turn["first_audio_ms"] < 1500, turn
    assert turn["overhead_ms"] < 150 and turn["uplink_lag_ms"] < 100, turn
    used = c.session.record.usage.usage  # the cost meter: audio seconds each way
    assert abs(used["gemini_live_in_s"] * 1000 - s.audio_in_ms) <= 20
    assert abs(used["gemini_live_out_s"] * 1000 - greeting["audio_ms"] - turn["audio_ms"]) <= 2
    print(json.dumps({"turn": turn, "server_first_audio_ms": s.first_audio_after_turn_ms}))


@pytest.mark.timeout(60)
def test_gateway_barge_in_drops_the_rest_of_the_model_turn(server, question):
    server.script(Reply(LONG), Reply("Sure."))
    c = call(server, 7.0, [(2.5, question)])
    [s] = c.sessions
    assert s.interrupted == 1 and s.replies == [LONG, "Sure."]
    assert c.session.record.barge_ins == 1 and c.flushes == 0  # the gateway flushed; the server's echo is a no-op
    greeting = c.session.record.turns[0]
    assert greeting["interrupted_by"] == "gateway", greeting
    onset = 2.5
    assert c.speech_s(onset + 0.7, onset + len(question) / 16000) < 0.1, "model audio after the barge-in"
    assert [e["by"] for e in c.events("gemini_interrupted")] == ["gateway"]


@pytest.mark.timeout(60)
def test_server_owned_turns_interrupted_flushes_our_playout_once(server, question):
    server.script(Reply(LONG), Reply("Sure, I can help with that."))
    c = call(server, 8.0, [(2.5, question)], turn_owner="server")
    [s] = c.sessions
    assert s.setup["realtimeInputConfig"]["automaticActivityDetection"]["disabled"] is False
    assert s.counts.get("realtimeInput", 0) > 100 and s.turns == 1 and s.interrupted == 1
    assert c.flushes == 1, "the server's interrupted must flush our playout exactly once"
    greeting, turn = c.session.record.turns
    assert greeting["interrupted_by"] == "server" and turn["text"] == "Sure, I can help with that."
    assert c.speech_s(2.5 + 0.3, 2.5 + len(question) / 16000) < 0.1
    assert c.speech_s(2.5 + len(question) / 16000, 8.0) > 0.6, "no reply after the caller's turn"
    print(json.dumps({"server_turn": turn}))


@pytest.mark.timeout(60)
def test_tool_calls_become_call_actions_with_tool_responses(server):
    tools = (("send_dtmf", {"digits": "12#"}), ("send_dtmf", {"digits": "x"}), ("open_door", {}),
             ("pause_recording", {}),
             ("transfer_call", {"target": "sip:sales@example.com", "headers": [{"name": "Via", "value": "x"}]}),
             ("transfer_call", {"target": "sip:sales@example.com", "headers": [{"name": "X-Case", "value": "42"}]}),
             ("end_call", {}))
    server.script(Reply("One moment.", misbehave="tool_call", tools=tools))
    c = call(server, 15.0)
    assert c.actions.hung_up.is_set() and c.session.record.end_reason == "agent"
    assert c.actions.dtmf == ["12#"] and c.actions.transfers == ["sip:sales@example.com?X-Case=42"]
    [s] = c.sessions
    got = [(r["name"], r["response"]) for r in s.tool_responses]
    assert got[0] == ("send_dtmf", {"result": "sent 12#"})
    assert [n for n, _ in got] == ["send_dtmf", "send_dtmf", "open_door", "pause_recording", "transfer_call",
                                   "transfer_call"]
    assert all("error" in resp for _, resp in got[1:]) and "603" in got[5][1]["error"]
    assert "'Via' may not be sent" in got[4][1]["error"]  # refused before any REFER
    assert got[3][1] == {"error": "the call is not recorded"}  # this route does not record
    assert s.replies[1:] == [AFTER_TOOL["ok"]] + [AFTER_TOOL["error"]] * 5


@pytest.mark.timeout(60)
def test_go_away_resumes_the_session_with_the_latest_handle(server, question):
    server.script(Reply("Hello.", misbehave="go_away", time_left_s=1.5), Reply("Yes, still here."))
    c = call(server, 7.0, [(3.0, question)])
    first, second = c.sessions
    assert len(first.handles) == 2 and second.resumed_from == first.handles[-1]
    assert first.closed.startswith("client closed"), "the agent should leave before the server closes"
    assert second.turns == 1 and second.replies == ["Yes, still here."] and second.texts == []
    assert c.speech_s(3.0 + len(question) / 16000, 7.0) > 0.5
    assert not c.events("agent_say"), "a planned reconnect needs no apology"
    ready = [e["ready_ms"] for e in c.events("gemini_connected")]
    print(json.dumps({"go_away_reconnect_ms": ready[1]}))
    assert ready[1] < 500


@pytest.mark.timeout(60)
def test_dropped_connection_and_dead_server_get_an_apology_and_the_call_goes_on(server):
    server.script(Reply(OPENING, misbehave="drop", down_s=1.2), Reply("As I was saying, we are open until six."))
    refused = server.refused
    c = call(server, 8.0)
    first, second = c.sessions
    assert server.refused > refused, "the server was not down"
    assert second.resumed_from in server.handles and second.texts == [RESUME_TEXT]
    [drop] = [t for t in server.when("drop") if t > c.t0]
    [apology] = c.events("agent_say")
    assert "trouble" in apology["text"]
    assert apology["ts"] - drop < 1.0, f"apology {apology['ts'] - drop:.2f} s after the drop"
    assert c.speech_s(c.at(drop) + 2.5, 8.0) > 0.8, "no speech after the reconnect"
    [cut] = [t for t in c.session.record.turns if t["cut"]]
    assert cut["trigger"] == "greeting"
    print(json.dumps({"apology_after_drop_ms": round((apology["ts"] - drop) * 1000),
                      "outage_ms": c.events("gemini_connected")[1]["ready_ms"]}))


@pytest.mark.timeout(60)
def test_a_refused_connect_with_a_fallback_apologises_at_once_and_the_cascade_carries_on(server):
    cascade = Takeover()
    c = call(server, 6.0, takeover=cascade, url=f"ws://127.0.0.1:{free_port()}/live", fallback="desk")
    apology, line = c.events("agent_say")
    assert "trouble" in apology["text"] and line["text"] == cascade.line
    assert c.at(apology["ts"]) < 1.0, c.at(apology["ts"])
    assert cascade.handovers == [Handover(())] and not c.events("gemini_connected")
    assert c.session.record.turns == [{"engine": "gemini_live", "fallback": "desk", "reason": "connect refused"}]


@pytest.mark.timeout(60)
def test_a_server_down_past_the_reconnects_hands_the_conversation_to_the_fallback(server):
    server.script(Reply("Hello there."), Reply(OPENING, misbehave="drop", down_s=6.0))
    cascade = Takeover()
    c = call(server, 10.0, [(1.5, audio.scale_to_db(audio.trim(audio.piper("Hi.")), -20.0))], takeover=cascade,
             fallback="desk", reconnect_attempts=1)
    [apology] = [e for e in c.events("agent_say") if "trouble" in e["text"]]
    [drop] = [t for t in server.when("drop") if t > c.t0]
    assert apology["ts"] - drop < 1.0 and c.events("agent_say")[-1]["text"] == cascade.line
    [handover] = cascade.handovers
    assert handover is not None and handover.messages[0] == ("assistant", "Hello there."), handover
    fell = c.session.record.turns[-1]
    assert fell == {"engine": "gemini_live", "fallback": "desk", "reason": "2 failed connects in a row"}, fell


@pytest.mark.timeout(60)
def test_malformed_messages_are_ignored_and_a_stalled_server_is_left(server, question):
    server.script(Reply("Hello.", misbehave="malformed"), Reply(OPENING, misbehave="stall"), Reply("Back again."))
    c = call(server, 10.0, [(2.0, question)], response_timeout_s=1.0)
    first, second = c.sessions
    bad = [e["error"] for e in c.events("gemini_bad_message")]
    assert len(bad) >= 5, bad
    assert c.speech_s(0, 2.0) > 0.3, "the reply after the malformed messages was not played"
    [stall] = [t for t in server.when("stall") if t > c.t0]
    [gone] = [e for e in c.events("gemini_disconnected") if e["reason"] == "stalled"]
    assert 1.0 <= gone["ts"] - stall < 1.6
    assert second.resumed_from in server.handles and second.texts == [RESUME_TEXT]
    assert second.replies == ["Back again."]
    assert len(c.events("agent_say")) == 1


def test_a_receiver_cancelled_as_a_message_arrives_stops() -> None:
    """Python 3.11's `asyncio.wait_for` returned such a message and dropped the cancellation: the call hung."""

    async def main() -> None:
        cfg = GeminiLiveConfig.model_validate({"type": "gemini_live", "url": "ws://127.0.0.1:9/", "api_key_env": None})
        agent = GeminiLiveAgent(GeminiLiveFactory("gemini", cfg, PromptCache()))
        messages: asyncio.Queue[str] = asyncio.Queue()

        class Socket:
            async def recv(self) -> str:
                return await messages.get()

        receiver = asyncio.create_task(agent._receive(cast(Any, Socket())))
        await asyncio.sleep(0.01)
        messages.put_nowait(json.dumps({"usageMetadata": {}}))
        receiver.cancel()  # in the same turn of the loop as the message
        await asyncio.wait({receiver}, timeout=1.0)
        stopped = receiver.cancelled()
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        assert stopped, "the receiver went on reading after it was cancelled"

    asyncio.run(main())
