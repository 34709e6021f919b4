"""The sans-IO parts of the stream transports: Twilio message rules, wire audio conversion, and the order of what a
stream call sends (clear before audio, a mark after an utterance's last frame)."""

from __future__ import annotations

import base64
import json
import uuid

import numpy as np
import pytest

from media.events import MediaEvent
from media.frames import FRAME_BYTES
from media.g711 import ulaw_encode
from media.pipeline import CallMedia
from telephony.config import ConfigError, parse_config
from telephony.transports import audiosocket_frames as af
from telephony.transports import twilio
from telephony.transports.stream import SendAudio, SendClear, SendMark, StreamCall, WireAudio

MINIMAL_CONFIG = "agents:\n  e: {type: echo}\nroutes: []\nlog_level: info\n"
START = {"event": "start", "start": {"streamSid": "MZ1", "callSid": "CA1", "customParameters": {"to": "demo"},
                                     "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


def media(payload: bytes) -> str:
    return json.dumps({"event": "media", "media": {"track": "inbound", "payload": base64.b64encode(payload).decode()}})


def tone(freq: float, rate: int, seconds: float, amp: float = 8000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return bytes((np.sin(2 * np.pi * freq * t) * amp).astype("<i2").tobytes())


def test_a_stream_parses_start_media_dtmf_mark_stop() -> None:
    s = twilio.StreamState()
    assert isinstance(s.receive(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})),
                      twilio.Connected)
    st = s.receive(json.dumps(START))
    assert st == twilio.Start("MZ1", "CA1", {"to": "demo"}, ("inbound",))
    assert s.receive(media(b"\xff" * 160)) == twilio.Media(b"\xff" * 160, "inbound")
    assert s.receive(json.dumps({"event": "dtmf", "dtmf": {"digit": "#"}})) == twilio.Dtmf("#")
    assert s.receive(json.dumps({"event": "mark", "mark": {"name": "item-1"}})) == twilio.Mark("item-1")
    assert s.receive(json.dumps({"event": "stop", "stop": {}})) == twilio.Stop()
    assert s.receive(json.dumps({"event": "future"})) == twilio.Unknown("future")


@pytest.mark.parametrize(("data", "says"), [
    ("{oops", "not JSON"),
    (b"\x00", "binary frame"),
    ("[1, 2]", "no event name"),
    (json.dumps({"event": "media", "media": {"payload": "//8="}}), "media before start"),
    (json.dumps({**START, "start": {**START["start"], "mediaFormat": {"encoding": "audio/l16"}}}), "not supported"),
    (json.dumps({"event": "dtmf", "dtmf": {"digit": "x"}}), "is not one of"),
])
def test_bad_messages_name_what_is_wrong(data: str | bytes, says: str) -> None:
    with pytest.raises(twilio.ProtocolError, match=says):
        twilio.StreamState().receive(data)


@pytest.mark.parametrize(("payload", "says"), [("not base64!", "not valid base64"), ("/" * 4000, "3000 bytes"),
                                                ("", "0 bytes")])
def test_bad_media_payloads_are_refused(payload: str, says: str) -> None:
    s = twilio.StreamState()
    s.receive(json.dumps(START))
    with pytest.raises(twilio.ProtocolError, match=says):
        s.receive(json.dumps({"event": "media", "media": {"payload": payload}}))


def test_a_second_start_is_refused() -> None:
    s = twilio.StreamState()
    s.receive(json.dumps(START))
    with pytest.raises(twilio.ProtocolError, match="second start"):
        s.receive(json.dumps(START))


def test_outbound_messages_carry_the_stream_sid() -> None:
    assert json.loads(twilio.encode(SendAudio(b"\x01\x02"), "MZ1")) == {
        "event": "media", "streamSid": "MZ1", "media": {"payload": "AQI="}}
    assert json.loads(twilio.encode(SendMark("item-3"), "MZ1")) == {
        "event": "mark", "streamSid": "MZ1", "mark": {"name": "item-3"}}
    assert json.loads(twilio.encode(SendClear(), "MZ1")) == {"event": "clear", "streamSid": "MZ1"}


@pytest.mark.parametrize(("encoding", "rate", "chunk"), [("mulaw", 8000, 160), ("slin", 8000, 320),
                                                         ("slin", 16000, 640)])
def test_wire_audio_round_trip_keeps_speech_band_level(encoding: str, rate: int, chunk: int) -> None:
    w = WireAudio(encoding, rate)  # type: ignore[arg-type]
    src = tone(1000, rate, 0.5)
    wire = src if encoding == "slin" else ulaw_encode(src)
    up = b"".join(w.decode(wire[i : i + chunk]) for i in range(0, len(wire), chunk))
    assert len(up) == 16000 // 2 * 2  # 0.5 s at 16 kHz, one output sample per input sample's worth
    back = b"".join(w.encode(up[i : i + FRAME_BYTES]) for i in range(0, len(up), FRAME_BYTES))
    assert len(back) == len(wire)
    x = np.frombuffer(w.decode(back) if encoding == "mulaw" else back, dtype="<i2").astype(np.float64)[800:]
    level = 20 * np.log10(np.sqrt((x**2).mean()) / (8000 / np.sqrt(2)))
    assert abs(level) < 0.5, level


def test_tick_sends_clear_before_audio_and_a_mark_after_the_last_frame() -> None:
    events: list[MediaEvent] = []
    call: StreamCall

    def emit(ev: MediaEvent) -> None:
        events.append(ev)
        call.observe(ev)

    media = CallMedia(emit)
    call = StreamCall(media, WireAudio("mulaw", 8000))
    assert call.tick(0.0) == []  # nothing to play: nothing sent
    media.push(tone(300, 16000, 0.04), item=1)
    first, second = call.tick(0.02), call.tick(0.04)
    assert [type(o) for o in first] == [SendAudio] and len(first[0].payload) == 160  # type: ignore[union-attr]
    assert [type(o) for o in second] == [SendAudio, SendMark] and second[1] == SendMark("item-1")
    media.push(tone(300, 16000, 0.2), item=2)
    call.tick(0.06)
    media.flush(0.07)  # the agent drops its reply between ticks
    assert call.tick(0.08) == [SendClear()]
    media.flush(0.09)
    assert call.tick(0.10) == []  # nothing went out since the clear: nothing to clear


def test_inbound_audio_is_cut_into_whole_16k_frames() -> None:
    media = CallMedia(lambda ev: None)
    call = StreamCall(media, WireAudio("mulaw", 8000))
    for _ in range(3):
        call.on_audio(0.0, b"\xff" * 100)  # 12.5 ms each
    assert media.stats.frames_in == 1  # 37.5 ms in: one whole frame, the rest waits


def test_audiosocket_frames_split_across_reads_and_bad_lengths_fail_from_the_header() -> None:
    call = uuid.UUID(int=7)
    data = af.encode(af.UUID, call.bytes) + af.encode(af.SLIN8, b"\x01\x00" * 160) + af.encode(af.DTMF, b"5")
    p = af.Parser()
    frames = [f for i in range(0, len(data), 7) for f in p.feed(data[i : i + 7])]
    assert frames == [af.CallId(str(call)), af.Audio(af.SLIN8, b"\x01\x00" * 160), af.Digit("5")]
    assert p.partial == 0
    assert list(p.feed(af.encode(af.HANGUP) + af.encode(af.ERROR, b"\x04"))) == [af.Hangup(), af.PeerError(4)]
    with pytest.raises(af.ProtocolError, match="65535 bytes"):
        list(af.Parser().feed(b"\x12\xff\xff"))  # refused before its payload arrives
    good_then_bad = af.Parser().feed(af.encode(af.UUID, call.bytes) + af.encode(af.DTMF, b"x"))
    assert next(good_then_bad) == af.CallId(str(call))
    with pytest.raises(af.ProtocolError, match="DTMF"):
        next(good_then_bad)


def test_transport_config_errors_name_the_line() -> None:
    text = (MINIMAL_CONFIG + "transports:\n  media_stream:\n    port: 5060\n    agent: nobody\n")
    with pytest.raises(ConfigError) as e:
        parse_config(text, "vg.yaml")
    [issue] = e.value.issues
    assert (issue.line, issue.field) == (6, "transports") and "unknown agent 'nobody'" in issue.message
    with pytest.raises(ConfigError) as e:
        parse_config(text.replace("agent: nobody", "agent: e"), "vg.yaml")
    assert "sip.port and media_stream.port both want TCP port 5060" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config(MINIMAL_CONFIG + "transports:\n  audiosocket:\n    uuids: {nope: e}\n", "vg.yaml")
    assert str(e.value.issues[0]).startswith("vg.yaml:7: transports.audiosocket.uuids: 'nope' is not a UUID")


def test_a_phone_page_off_loopback_needs_a_token_named_with_its_line() -> None:
    text = MINIMAL_CONFIG + "transports:\n  webrtc:\n    agent: e\n    listen: 0.0.0.0\n"
    with pytest.raises(ConfigError) as e:
        parse_config(text, "vg.yaml")
    [issue] = e.value.issues
    assert str(issue).startswith("vg.yaml:7: transports.webrtc: listen 0.0.0.0 is not a loopback address"), issue
    assert "set token_env" in issue.message
    webrtc = parse_config(text + "    token_env: VG_PHONE_TOKEN\n").transports.webrtc
    assert webrtc is not None and webrtc.token_env == "VG_PHONE_TOKEN"
    for loopback in ("127.0.0.1", "::1"):
        assert parse_config(text.replace("0.0.0.0", loopback)).transports.webrtc is not None
