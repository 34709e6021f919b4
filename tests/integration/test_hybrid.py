"""The hybrid agent on a real SIP call: pjsua2 caller -> voicegate -> the cascade (the shipped hotel assistant), then
the local OpenAI Realtime server once the caller asks for a person. Also a hybrid whose cascade has an LLM (the
local chat-completions server) and a business tool (a local webhook), which both backends call."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from agents.openai_realtime import OpenAIRealtimeConfig
from media.resample import resample
from media.vad import Vad
from telephony.records import totals
from tests import audio
from tests.integration.peers import VENV_BIN, Gateway, call, free_port, gateway_config, start_gateway
from tests.servers.llm import LlmServer, text_reply, tool_reply
from tests.servers.openai_realtime import RealtimeServer, render, speak, tool
from tests.servers.webhook import Webhook

KEY_ENV = "VG_TEST_REALTIME_KEY"
QUESTION = "When are you open today?"
TRIGGER = "I want to speak to someone about a complaint."
ANSWER = "I am sorry to hear that. Please tell me what happened, and I will sort it out."
ASK_AT_S, TRIGGER_AT_S, CALL_S = 5.0, 15.0, 24.0  # the greeting (3 s) is over by 5 s, even on a busy machine


@pytest.fixture(scope="module")
def rt() -> Iterator[RealtimeServer]:
    with RealtimeServer() as server:
        yield server


@pytest.fixture(scope="module")
def gone() -> Iterator[RealtimeServer]:
    """A Realtime server that the fallback test stops before it calls."""
    with RealtimeServer() as server:
        yield server


@pytest.fixture(scope="module")
def llm() -> Iterator[LlmServer]:
    with LlmServer() as server:
        yield server


@pytest.fixture(scope="module")
def hook() -> Iterator[Webhook]:
    with Webhook(reply={"found": True, "status": "shipped"}) as h:
        yield h


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, rt: RealtimeServer, llm: LlmServer, hook: Webhook,
       gone: RealtimeServer) -> Iterator[Gateway]:
    os.environ[KEY_ENV] = "sk-test"
    port = free_port()
    cfg = yaml.safe_load(gateway_config(port))
    cfg["agents"]["rt"] = {"type": "openai_realtime", "url": rt.url, "api_key_env": KEY_ENV, "audio_format": "pcmu"}
    cfg["agents"]["hybrid"] = {"type": "hybrid", "cascade": "assistant", "s2s": "rt"}
    cfg["agents"]["shop"] = {"type": "cascaded", "tools": ["order_status"],
                             "llm": {"base_url": llm.base_url, "model": "test-model", "api_key_env": None,
                                     "greeting": "Hi.", "first_token_timeout_s": 2.0}}
    cfg["agents"]["hytools"] = {"type": "hybrid", "cascade": "shop", "s2s": "rt"}
    cfg["agents"]["hyangry"] = {"type": "hybrid", "cascade": "assistant", "s2s": "rt",
                                "escalate_when": {"baseline_turns": 1}}  # one calm question sets the baseline
    cfg["agents"]["rt_gone"] = {"type": "openai_realtime", "url": gone.url, "api_key_env": KEY_ENV,
                                "fallback": "assistant"}
    cfg["tools"]["order_status"]["http"].update(url=hook.url + "/orders/{order_id}", timeout_s=1.0, retries=0)
    cfg["routes"] = [{"match": "hybrid", "agent": "hybrid"}, {"match": "rt", "agent": "rt"},
                     {"match": "hytools", "agent": "hytools"}, {"match": "rt-gone", "agent": "rt_gone"},
                     {"match": "hyangry", "agent": "hyangry"}]
    cfg["prices"] = {"asr_per_min": 0.006, "tts_per_char": 0.000015, "sip_per_min": 0.004,
                     "s2s": {"openai_realtime": {"in_per_min": 0.02, "out_per_min": 0.08}}}
    g = start_gateway(yaml.safe_dump(cfg), tmp_path_factory.mktemp("gw-hybrid"), port)
    yield g
    assert g.stop() == 0


def speech_s(x: np.ndarray) -> float:
    vad = Vad(2)
    return sum(vad.is_speech(audio.to_pcm(x[i : i + 320])) for i in range(0, len(x) - 319, 320)) * 0.02


@pytest.mark.timeout(90)
def test_a_complaint_moves_the_call_from_the_cascade_to_s2s_with_the_conversation(
    gw: Gateway, rt: RealtimeServer, tmp_path: Path
) -> None:
    rt.reset()
    rt.script(speak(ANSWER))
    ask, trigger = audio.piper(QUESTION), audio.piper(TRIGGER)
    talk = np.zeros(int(CALL_S * 16000), np.float32)
    for at, x in ((ASK_AT_S, ask), (TRIGGER_AT_S, trigger)):
        talk[int(at * 16000) : int(at * 16000) + len(x)] = x
    wav = audio.write_wav(tmp_path / "talk.wav", talk)
    res = call(f"sip:hybrid@127.0.0.1:{gw.port}", "--play", str(wav), "--speak-at-s", "0", "--duration",
               str(CALL_S), "--record", str(tmp_path / "rx.wav"), timeout=CALL_S + 30)
    assert res["status"] == 200 and not res["remote_hangup"], res
    end = gw.wait_event("call_end", 15, call=gw.events("call_incoming")[-1]["call"])
    print(json.dumps({"prepare_s": gw.events("gateway_ready")[0]["prepare_s"], "turns": end["turns"]}))
    cascade, escalation, s2s = end["turns"]
    # the calm question: answered by the cascade's dialog
    assert cascade["backend"] == "cascaded" and "open" in cascade["text"].lower(), cascade
    assert cascade["reply"].startswith("Reception is open"), cascade
    # the complaint: the router moves the call, once, to the S2S agent in the voice matched to piper's joe
    assert escalation["escalation"] == "phrase" and "complaint" in escalation["detail"].lower(), escalation
    assert escalation | {"detail": "", "handover_ms": 0} == {
        "backend": "hybrid", "escalation": "phrase", "detail": "", "after_turns": 1, "handover_ms": 0,
        "to": "openai_realtime", "voice": "cedar", "usd_estimate": None}
    # the caller's pause (a complete sentence: commit_complete_ms, 240 ms, at the endpoint), then S2S
    assert 240 - 1 <= escalation["handover_ms"] < 1200, escalation
    assert s2s["backend"] == "openai_realtime" and s2s["trigger"] == "handover", s2s
    assert s2s["status"] == "completed" and s2s["text"] == ANSWER, s2s
    # the server got the conversation so far as context items, then the request to answer it
    assert rt.violations == [] and rt.connections == 1
    sent = [r.event for r in rt.received if r.type != "input_audio_buffer.append"]
    assert [e["type"] for e in sent] == ["session.update", *["conversation.item.create"] * 5, "response.create"]
    assert sent[0]["session"]["audio"]["output"]["voice"] == "cedar"
    said = [(i["item"]["role"], i["item"]["content"][0]["text"]) for i in sent[1:6]]
    assert [role for role, _ in said] == ["system", "assistant", "user", "assistant", "user"], said
    assert said[1][1] == "Thanks for calling Harbour Hotel. How can I help?"
    assert said[2][1] == cascade["text"] and said[3][1] == cascade["heard"]
    assert "complaint" in said[4][1].lower(), said
    # ... and the caller heard its answer after the complaint
    rx = audio.read_wav(tmp_path / "rx.wav")
    after = rx[int((TRIGGER_AT_S + len(trigger) / 16000) * 16000) :]
    assert speech_s(after) > 2.0, speech_s(after)
    ref = audio.telephone_band(audio.to_array(resample(render(ANSWER), 24000)))
    peak = audio.piecewise_correlation(ref, after)
    assert peak > 0.7, peak  # 0.99 on a quiet machine; other speech 0.24, noise 0.05


def dial(uri: str, wav: Path) -> dict[str, Any]:
    return call(uri, "--play", str(wav), "--speak-at-s", "0", "--duration", "12", timeout=40)


@pytest.mark.timeout(120)
def test_the_cost_report_shows_the_hybrid_saving_against_all_s2s(gw: Gateway, rt: RealtimeServer,
                                                                  tmp_path: Path) -> None:
    rt.reset()
    lines = (QUESTION, "What time do you close?", TRIGGER)  # two routine calls, one that escalates
    wavs = []
    for i, text in enumerate(lines):
        talk = np.zeros(12 * 16000, np.float32)
        x = audio.piper(text)
        talk[4 * 16000 : 4 * 16000 + len(x)] = x
        wavs.append(audio.write_wav(tmp_path / f"call{i}.wav", talk))
    ids = {}
    for agent in ("hybrid", "rt"):
        before = len(gw.events("call_incoming"))
        uri = f"sip:{agent}@127.0.0.1:{gw.port}"
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(partial(dial, uri), wavs))
        ids[agent] = {e["call"] for e in gw.events("call_incoming")[before:]}
        for c in ids[agent]:
            gw.wait_event("call_end", 15, call=c)
    report = subprocess.run([str(VENV_BIN / "voicegate"), "calls", "--config", str(gw.config), "--last", "50",
                             "--json"], capture_output=True, text=True, timeout=30, check=True)
    calls = json.loads(report.stdout)["calls"]
    mix = {agent: totals([c for c in calls if c["call"] in ids[agent]]) for agent in ids}
    print(json.dumps(mix))
    assert mix["hybrid"]["calls"] == mix["rt"]["calls"] == 3
    backends = [set(c["backends"]) for c in calls if c["call"] in ids["hybrid"]]
    assert backends.count({"cascaded"}) == 2 and sum("openai_realtime" in b for b in backends) == 1, backends
    assert mix["hybrid"]["cost_per_min"] < 0.6 * mix["rt"]["cost_per_min"], mix


@pytest.mark.timeout(150)  # the module's gateway may start first: 45 s on a loaded machine
def test_both_backends_of_a_hybrid_call_the_tool_and_the_s2s_agent_is_told_the_cascades_call(
    gw: Gateway, rt: RealtimeServer, llm: LlmServer, hook: Webhook, tmp_path: Path
) -> None:
    rt.reset()
    hook.requests.clear()
    llm.script(tool_reply([("call_1", "order_status", ['{"order_id": ', '"1001"}'])]),
               text_reply(["Order 1001 has shipped."]))
    rt.script(tool("order_status", {"order_id": "1002"}), speak("Order 1002 has shipped too."))
    talk = np.zeros(14 * 16000, np.float32)
    for at, text in ((1.5, "Where is my order one zero zero one?"), (7.0, TRIGGER)):
        x = audio.piper(text)
        talk[int(at * 16000) : int(at * 16000) + len(x)] = x
    wav = audio.write_wav(tmp_path / "talk.wav", talk)
    res = call(f"sip:hytools@127.0.0.1:{gw.port}", "--play", str(wav), "--speak-at-s", "0", "--duration", "14",
               timeout=45)
    assert res["status"] == 200, res
    end = gw.wait_event("call_end", 15, call=gw.events("call_incoming")[-1]["call"])
    turns = end["turns"]
    print(json.dumps(turns))
    # one lookup by each backend, each recorded as its own
    assert [r.path for r in hook.requests] == ["/orders/1001", "/orders/1002"]
    tools = [(t["backend"], t["arguments"], t["ok"]) for t in turns if t.get("tool") == "order_status" and "ok" in t]
    assert tools == [("cascaded", {"order_id": "1001"}, True), ("openai_realtime", {"order_id": "1002"}, True)]
    assert [t["escalation"] for t in turns if "escalation" in t] == ["phrase"]
    # the S2S session offers the tool and was given the cascade's call with its result, before the complaint
    assert rt.violations == []
    sent = [r.event for r in rt.received if r.type != "input_audio_buffer.append"]
    assert "order_status" in [t["name"] for t in sent[0]["session"]["tools"]]
    items = [e["item"] for e in sent if e["type"] == "conversation.item.create"]
    call_item = next(i for i in items if i["type"] == "function_call")
    assert call_item["call_id"] == "call_1" and json.loads(call_item["arguments"]) == {"order_id": "1001"}
    outputs = [json.loads(i["output"]) for i in items if i["type"] == "function_call_output"]
    assert outputs[0] == {"ok": True, "result": {"found": True, "status": "shipped"}}
    assert "complaint" in items[items.index(call_item) + 2]["content"][0]["text"].lower()


@pytest.mark.timeout(90)
def test_a_dead_s2s_server_gets_an_apology_at_once_and_the_fallback_cascade_answers(
    gw: Gateway, gone: RealtimeServer, tmp_path: Path
) -> None:
    gone.stop()
    ask_at, call_s = 8.0, 14.0  # after the apology (3.5 s) and the cascade's greeting (3 s)
    talk = np.zeros(int(call_s * 16000), np.float32)
    x = audio.piper(QUESTION)
    talk[int(ask_at * 16000) : int(ask_at * 16000) + len(x)] = x
    wav = audio.write_wav(tmp_path / "talk.wav", talk)
    res = call(f"sip:rt-gone@127.0.0.1:{gw.port}", "--play", str(wav), "--speak-at-s", "0", "--duration",
               str(call_s), "--record", str(tmp_path / "rx.wav"), timeout=call_s + 30)
    assert res["status"] == 200 and not res["remote_hangup"], res
    c = gw.events("call_incoming")[-1]["call"]
    end = gw.wait_event("call_end", 15, call=c)
    answered = gw.wait_event("call_answered", 1, call=c)
    said = [e for e in gw.events("agent_say") if e["call"] == c]
    apology_ms = round((said[0]["ts"] - answered["ts"]) * 1000)
    print(json.dumps({"apology_after_answer_ms": apology_ms, "turns": end["turns"]}))
    apology = OpenAIRealtimeConfig(type="openai_realtime").apology
    assert said[0]["text"] == apology and said[0]["ts"] - answered["ts"] < 1.0, (said[0], answered)
    assert gw.wait_event("s2s_fallback", 1, call=c)["reason"] == "connect refused"
    fell, *cascade = end["turns"]
    assert fell == {"engine": "openai_realtime", "fallback": "assistant", "reason": "connect refused"}
    # the cascade greets (there was no conversation yet) and answers the caller's question
    [answer] = [t for t in cascade if t.get("backend") == "cascaded"]
    assert "open" in answer["text"].lower() and answer["reply"].startswith("Reception is open"), answer
    rx = audio.read_wav(tmp_path / "rx.wav")
    assert speech_s(rx[int(4.5 * 16000) : int(ask_at * 16000)]) > 1.0  # the greeting, after the apology
    assert speech_s(rx[int((ask_at + len(x) / 16000) * 16000) :]) > 1.0  # the answer


@pytest.mark.timeout(90)
def test_an_angry_voice_after_a_calm_question_moves_the_call_to_s2s(gw: Gateway, rt: RealtimeServer,
                                                                     tmp_path: Path) -> None:
    """The same words said calmly, then with raised pitch, level and rate (espeak-ng, as the router's unit test):
    the router judges the second against the caller's first turn on the wire, not against absolute levels."""
    rt.reset()
    rt.script(speak("I can hear you are upset. Let me help."))
    calm = audio.espeak(QUESTION)
    angry = np.clip(audio.espeak("Is breakfast included with the room", pitch=85, amplitude=190, speed=230),
                    -32768, 32767)
    calm_at, angry_at, call_s = 5.0, 14.0, 18.5  # after the greeting (3 s); after the 5.5 s answer to the question
    talk = np.zeros(int(call_s * 16000), np.float32)
    for at, x in ((calm_at, calm), (angry_at, angry)):
        talk[int(at * 16000) : int(at * 16000) + len(x)] = x
    wav = audio.write_wav(tmp_path / "talk.wav", talk)
    res = call(f"sip:hyangry@127.0.0.1:{gw.port}", "--play", str(wav), "--speak-at-s", "0", "--duration",
               str(call_s), "--record", str(tmp_path / "rx.wav"), timeout=call_s + 30)
    assert res["status"] == 200 and not res["remote_hangup"], res
    end = gw.wait_event("call_end", 15, call=gw.events("call_incoming")[-1]["call"])
    turns = end["turns"]
    print(json.dumps(turns))
    cascade = [t for t in turns if t.get("backend") == "cascaded"]
    assert len(cascade) == 1 and "open" in cascade[0]["text"].lower(), turns  # the calm question, answered
    assert not cascade[0]["interrupted"], cascade  # and heard in full: the angry turn is one of its own
    [escalation] = [t for t in turns if "escalation" in t]
    assert escalation["escalation"] == "arousal" and escalation["to"] == "openai_realtime", escalation
    assert float(escalation["detail"].split()[1]) >= 2.0, escalation  # "z 2.8 (pitch +.., level +.., arousal +..)"
    s2s = [t for t in turns if t.get("backend") == "openai_realtime"]
    assert s2s and s2s[0]["trigger"] == "handover" and s2s[0]["status"] == "completed", s2s
    assert rt.violations == []
