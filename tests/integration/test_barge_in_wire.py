"""Barge-in measured on the caller's side of the wire, against the `long` prompt agent."""

from __future__ import annotations

from pathlib import Path

from telephony.simulator import measure as wire
from tests import audio
from tests.integration.peers import Gateway, call

WIRE_BOUND_MS = 300  # generous: the benchmark shows the real figure (target: p95 <= 100 ms)


def _long(gw: Gateway) -> str:
    return f"sip:long@127.0.0.1:{gw.port}"


def test_caller_speech_stops_the_agent(gateway: Gateway, workdir: Path, clips):
    wav = audio.write_wav(workdir / "c.wav", clips.caller)
    r = call(_long(gateway), "--play", str(wav), "--speak-after-agent-ms", "2000", "--duration", "5",
             "--record", str(workdir / "rx.wav"), "--record-sent", str(workdir / "tx.wav"))
    tx, rx = audio.read_wav(workdir / "tx.wav"), audio.read_wav(workdir / "rx.wav")
    reaction = wire.reaction_ms(tx, rx, r["speak_start_frame"])
    assert reaction <= WIRE_BOUND_MS, f"agent kept talking {reaction} ms"
    onset = wire.caller_onset_frame(tx, r["speak_start_frame"])
    last = wire.last_agent_frame(rx, onset)
    assert wire.agent_audio_after(rx, last + 1, 1.5) == 0.0, "agent audio came back after the barge-in"
    end = gateway.wait_event("call_end", 10, call=gateway.events("call_answered")[-1]["call"])
    assert end["barge_ins"] == 1


def test_backchannel_does_not_stop_the_agent(gateway: Gateway, workdir: Path, clips):
    wav = audio.write_wav(workdir / "bc.wav", clips.backchannels["uh-huh"])
    r = call(_long(gateway), "--play", str(wav), "--speak-after-agent-ms", "2000", "--duration", "6",
             "--record", str(workdir / "rx.wav"), "--record-sent", str(workdir / "tx.wav"))
    rx = audio.read_wav(workdir / "rx.wav")
    onset = r["speak_start_frame"]
    assert wire.agent_audio_after(rx, onset + 25, 2.0) > 1.0, "agent went quiet after a backchannel"
    end = gateway.wait_event("call_end", 10, call=gateway.events("call_answered")[-1]["call"])
    assert end["barge_ins"] == 0


def test_own_echo_at_minus_12_db_does_not_stop_the_agent(gateway: Gateway, workdir: Path):
    call(_long(gateway), "--echo-db", "-12", "--echo-delay-ms", "100", "--duration", "6")
    end = gateway.wait_event("call_end", 10, call=gateway.events("call_answered")[-1]["call"])
    assert end["barge_ins"] == 0 and end["resumed"] == 0, end
