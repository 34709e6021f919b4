"""The call's media port driven as pjsua's conference bridge drives it: through pjmedia's own put_frame/get_frame."""

from __future__ import annotations

import ctypes

import pjsua2 as pj

from media.frames import FRAME_BYTES, SILENCE
from media.pipeline import CallMedia
from telephony.media_port import CallMediaPort, PjFrame, check_frame_layout, get_frame, put_frame

AUDIO = int(pj.PJMEDIA_FRAME_TYPE_AUDIO)
NONE = int(pj.PJMEDIA_FRAME_TYPE_NONE)
PJ_EINVALIDOP = 70013


class Bridge:
    """The buffers the bridge hands a port: the frame it received from the call, and its mix buffer to fill."""

    def __init__(self, out_bytes: int = FRAME_BYTES) -> None:
        self.rx_buf = ctypes.create_string_buffer(FRAME_BYTES)
        self.tx_buf = ctypes.create_string_buffer(out_bytes + 16)  # the 16 bytes past the request must stay 0
        self.out_bytes = out_bytes

    def put(self, port: CallMediaPort, pcm: bytes, kind: int = AUDIO) -> int:
        ctypes.memmove(self.rx_buf, pcm, len(pcm))
        return put_frame(port, PjFrame(type=kind, buf=ctypes.addressof(self.rx_buf), size=len(pcm)))

    def get(self, port: CallMediaPort) -> tuple[int, int, int, bytes]:
        f = PjFrame(type=NONE, buf=ctypes.addressof(self.tx_buf), size=self.out_bytes)
        status = get_frame(port, f)
        return status, f.type, f.size, self.tx_buf.raw[: f.size]


def echo_port() -> CallMediaPort:
    port = CallMediaPort("test")
    media = CallMedia(lambda e: None)
    media.set_loopback(True)
    port.attach(media, "call-1")
    return port


def test_the_layout_check_passes_on_this_wheel():
    check_frame_layout()


def test_an_echo_port_sends_back_each_frame_it_received():
    port, bridge = echo_port(), Bridge()
    frames = [bytes([i]) * FRAME_BYTES for i in range(1, 6)]
    out = []
    for pcm in frames:
        assert bridge.put(port, pcm) == 0
        out.append(bridge.get(port))
    assert out == [(0, AUDIO, FRAME_BYTES, pcm) for pcm in frames]
    assert port._errors == 0


def test_frames_that_are_not_one_whole_audio_frame_are_not_taken():
    port, bridge = echo_port(), Bridge()
    bridge.put(port, bytes([7]) * FRAME_BYTES, kind=NONE)  # the bridge's heart-beat frame
    bridge.put(port, bytes([8]) * (FRAME_BYTES // 2))
    assert port.media is not None and port.media.stats.frames_in == 0
    assert bridge.get(port) == (0, AUDIO, FRAME_BYTES, SILENCE)
    assert port._errors == 0


def test_a_request_for_less_than_a_frame_gets_no_audio_and_no_write_past_it():
    port, bridge = echo_port(), Bridge(out_bytes=FRAME_BYTES // 2)
    bridge.put(port, bytes([5]) * FRAME_BYTES)
    status, kind, _, _ = bridge.get(port)
    assert (status, kind) == (0, NONE)
    assert bridge.tx_buf.raw == bytes(len(bridge.tx_buf.raw))
    assert port._errors == 1


def test_a_detached_port_has_no_callbacks_and_a_reattached_one_works_again():
    port, bridge = echo_port(), Bridge()
    port.detach()
    assert port.media is None
    assert bridge.put(port, bytes([9]) * FRAME_BYTES) == PJ_EINVALIDOP
    assert bridge.get(port)[:2] == (PJ_EINVALIDOP, NONE)
    media = CallMedia(lambda e: None)
    media.set_loopback(True)
    port.attach(media, "call-2")
    bridge.put(port, bytes([3]) * FRAME_BYTES)
    assert bridge.get(port) == (0, AUDIO, FRAME_BYTES, bytes([3]) * FRAME_BYTES)
