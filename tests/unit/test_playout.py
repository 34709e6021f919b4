from __future__ import annotations

from media.events import PlayoutFinished, PlayoutFlushed, PlayoutStarted
from media.frames import FRAME_BYTES
from media.playout import PlayoutBuffer


def frames(n: int, value: int = 1) -> bytes:
    return bytes([value]) * (FRAME_BYTES * n)


def test_plays_items_in_order_and_reports_each():
    p = PlayoutBuffer()
    p.push(frames(2, 1), item=1)
    p.push(frames(1, 2), item=2)
    out = [p.next_frame(i * 0.02) for i in range(4)]
    assert [f[0][:1] if f[0] else None for f in out] == [b"\x01", b"\x01", b"\x02", None]
    evs = [e for _, evs in out for e in evs]
    assert evs == [PlayoutStarted(0.0, 1), PlayoutFinished(0.02, 1, 40), PlayoutStarted(0.04, 2),
                   PlayoutFinished(0.04, 2, 20)]


def test_pause_holds_position_and_resume_continues():
    p = PlayoutBuffer()
    p.push(frames(1, 1) + frames(1, 2) + frames(1, 3), item=7)
    assert p.next_frame(0) == (frames(1, 1), [PlayoutStarted(0, 7)])
    p.pause()
    assert p.next_frame(0.02) == (None, [])
    assert not p.speaking and p.pending
    p.resume()
    assert p.next_frame(0.04) == (frames(1, 2), [])  # started once: a resume is no new start


def test_flush_reports_what_was_heard():
    p = PlayoutBuffer()
    p.push(frames(5), item=3, last=False)
    p.next_frame(0)
    p.next_frame(0.02)
    assert p.flush(0.04) == [PlayoutFlushed(0.04, 3, 40)]
    assert not p.pending and p.next_frame(0.06) == (None, [])


def test_partial_last_frame_is_padded():
    p = PlayoutBuffer()
    p.push(b"\x05" * 100, item=1)
    f, evs = p.next_frame(0)
    assert f is not None and len(f) == FRAME_BYTES and f[:100] == b"\x05" * 100
    assert evs == [PlayoutStarted(0, 1), PlayoutFinished(0, 1, 20)]
