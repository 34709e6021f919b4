"""Load mode's progress: one line redrawn in place on a terminal (a real pseudo-terminal here), a line per call
otherwise."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import termios

from telephony.simulator.progress import Progress


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    p = Progress(3, out)
    for ok in (True, False, True):
        p.call_done(ok)
    p.close()
    assert out.getvalue().splitlines() == ["[1/3] 1 passed, 0 failed", "[2/3] 1 passed, 1 failed",
                                           "[3/3] 2 passed, 1 failed"]


def read_all(fd: int) -> str:
    """Everything written to the pty: a read returns one chunk of it (a CI run read only tqdm's first draw)."""
    chunks = []
    while select.select([fd], [], [], 0.5)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the slave side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_one_updating_line_on_a_terminal():
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    try:
        with os.fdopen(slave, "w") as tty:
            p = Progress(3, tty)
            for ok in (True, False, True):
                p.call_done(ok)
            p.close()
            tty.flush()
        text = read_all(master)
    finally:
        os.close(master)
    assert "\r" in text and "3/3" in text and "2 passed, 1 failed" in text, text
    assert text.count("\n") <= 1, text  # redrawn in place: at most the final newline
    assert "[1/3]" not in text
