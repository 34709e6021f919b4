"""The pjsua2 media port's frame access on real pjsua2 MediaFrames, filled the way pjsua2's port fills them."""

from __future__ import annotations

from typing import Any

import pjsua2 as pj

from media.frames import FRAME_BYTES, SILENCE
from media.pipeline import CallMedia
from telephony.media_port import CallMediaPort, check_frame_layout, read_buf

AUDIO = pj.PJMEDIA_FRAME_TYPE_AUDIO


def received(pcm: bytes, kind: int = AUDIO) -> Any:
    f = pj.MediaFrame()
    f.type, f.buf, f.size = kind, pj.ByteVector(pcm), len(pcm)
    return f


def requested() -> Any:
    f = pj.MediaFrame()
    f.size = FRAME_BYTES  # pjsua2 hands over an empty buffer and the size the bridge wants
    return f


def sent(f: Any) -> tuple[int, int, bytes]:
    return f.type, f.size, read_buf(f.buf, f.buf.size())


def echo_port() -> CallMediaPort:
    port = CallMediaPort()
    port.media = CallMedia(lambda e: None)
    port.media.set_loopback(True)
    return port


def test_the_layout_check_passes_on_this_wheel():
    check_frame_layout()


def test_an_echo_port_sends_back_each_frame_it_received():
    port = echo_port()
    frames = [bytes([i]) * FRAME_BYTES for i in range(1, 6)]
    out = []
    for pcm in frames:
        port.onFrameReceived(received(pcm))
        tx = requested()
        port.onFrameRequested(tx)
        out.append(sent(tx))
    assert out == [(AUDIO, FRAME_BYTES, pcm) for pcm in frames]
    assert port._errors == 0


def test_frames_that_are_not_one_whole_audio_frame_are_not_taken():
    port = echo_port()
    port.onFrameReceived(received(bytes([7]) * FRAME_BYTES, kind=pj.PJMEDIA_FRAME_TYPE_NONE))
    port.onFrameReceived(received(bytes([8]) * (FRAME_BYTES // 2)))
    assert port.media is not None and port.media.stats.frames_in == 0
    tx = requested()
    port.onFrameRequested(tx)
    assert sent(tx) == (AUDIO, FRAME_BYTES, SILENCE)
    assert port._errors == 0


def test_an_idle_port_sends_silence():
    port = CallMediaPort()
    port.onFrameReceived(received(bytes([9]) * FRAME_BYTES))
    tx = requested()
    port.onFrameRequested(tx)
    assert sent(tx) == (AUDIO, FRAME_BYTES, SILENCE)
