"""A pjsua2 test caller: dials a SIP URI, speaks a WAV on cue, sends DTMF, records what it hears, frame by frame.

A fixed plan for tests and benchmarks (scripted scenarios are `voicegate simulate`'s). Sent and received tracks
share one frame clock (see phone.py). Run as `python -m telephony.simulator.caller --help`; prints a JSON result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import wave
from dataclasses import asdict, dataclass, field

from media.frames import FRAME_MS, SAMPLE_RATE, split_frames
from media.wavfile import WavError, read_wav_16k
from telephony.simulator.phone import Phone


@dataclass
class Result:
    status: int = 0
    reason: str = ""
    answered: bool = False
    answer_s: float | None = None
    remote_hangup: bool = False
    frames_rx: int = 0
    frames_tx: int = 0
    speak_start_frame: int | None = None
    """Index (on the shared frame clock) of the first frame of the caller's utterance."""
    agent_speech_start_frame: int | None = None
    agent_audio_wall: float | None = None
    """Wall time (time.time()) the first agent audio arrived, to compare with a server's send time."""
    speak_start_wall: float | None = None
    """Wall time the caller's utterance started going out."""
    codec: str = ""
    dtmf_sent: list[str] = field(default_factory=list)
    refer_to: list[str] = field(default_factory=list)
    duration_s: float = 0.0


def _write_wav(path: str, frames: list[bytes]) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(b"".join(frames))


def run(args: argparse.Namespace) -> Result:
    try:
        speech = split_frames(read_wav_16k(args.play, allow_stereo=True)) if args.play else []
    except WavError as e:
        raise SystemExit(str(e)) from None
    phone = Phone(args.rtp_port, args.tcp, args.loss, args.tls_ca,
                  (args.tls_cert, args.tls_key) if args.tls_cert else None, bind=args.bind)
    phone.set_codecs(args.codec.split(","))
    call = phone.dial(args.uri)
    port = call.port
    call.accept_transfer = args.accept_transfer
    if args.echo_db is not None:
        port.set_echo(10 ** (args.echo_db / 20), args.echo_delay_ms // FRAME_MS)
    dtmf = sorted((float(t), d) for d, t in (x.split("@") for x in args.dtmf)) if args.dtmf else []
    res = Result()
    hung_up = False
    spoke = False
    held = [False, False]
    while not call.ended:
        phone.poll(10)
        now = time.monotonic()
        if call.confirmed_at is not None:
            since = now - call.confirmed_at
            if speech and not spoke:
                if args.speak_at_s is not None:
                    due = since >= args.speak_at_s
                elif args.speak_after_agent_silence_ms is not None:
                    with port.lock:
                        quiet = len(port.rx) - 1 - port.last_audio
                    due = port.first_audio >= 0 and quiet * FRAME_MS >= args.speak_after_agent_silence_ms
                else:
                    wait_frames = (args.speak_after_agent_ms or 0) / FRAME_MS
                    due = port.first_audio >= 0 and len(port.tx) >= port.first_audio + wait_frames
                if due:
                    spoke = True
                    port.speak(speech)
            while dtmf and since >= dtmf[0][0]:
                _, digits = dtmf.pop(0)
                phone.send_dtmf(call, digits, args.dtmf_info)
                res.dtmf_sent.append(digits)
            if args.hold_at is not None and since >= args.hold_at and not held[0]:
                held[0] = True
                phone.hold(call, True)
            if args.unhold_at is not None and since >= args.unhold_at and held[0] and not held[1]:
                held[1] = True
                phone.hold(call, False)
            if since >= args.duration and not hung_up:
                hung_up = True
                phone.hangup(call)
        if now - call.started > args.duration + args.answer_timeout + 5 and not hung_up:
            hung_up = True
            phone.hangup(call)
    phone.finish(call)
    if call.transfer_call is not None:  # the call a carried-out REFER made: ended before its object goes
        phone.finish(call.transfer_call)
    res.status = call.status
    res.reason = call.reason
    res.answered = call.confirmed_at is not None
    res.answer_s = round(call.confirmed_at - call.started, 3) if call.confirmed_at else None
    res.remote_hangup = not hung_up
    res.codec = call.codec
    res.refer_to = call.refer_to
    res.duration_s = round(time.monotonic() - call.started, 3)
    with port.lock:
        res.frames_rx, res.frames_tx = len(port.rx), len(port.tx)
        res.speak_start_frame = port.speech_start if speech else None
        res.agent_speech_start_frame = port.first_audio if port.first_audio >= 0 else None
        res.agent_audio_wall = port.first_audio_wall or None
        res.speak_start_wall = port.speech_start_wall if speech and port.speech_start is not None else None
        rx, tx = list(port.rx), list(port.tx)
    if args.record:
        _write_wav(args.record, rx)
    if args.record_sent:
        _write_wav(args.record_sent, tx)
    del call, port
    phone.close()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("uri")
    p.add_argument("--play", help="WAV the caller speaks (any rate, 16-bit)")
    p.add_argument("--speak-at-s", type=float, help="start speaking this long after the call is set up")
    p.add_argument("--speak-after-agent-ms", type=float, help="start speaking this long after agent audio starts")
    p.add_argument("--speak-after-agent-silence-ms", type=float,
                   help="start speaking once agent audio came and then stopped for this long (after the greeting)")
    p.add_argument("--record", help="WAV of what the caller hears (16 kHz)")
    p.add_argument("--record-sent", help="WAV of what the caller sends (16 kHz), on the same frame clock")
    p.add_argument("--duration", type=float, default=5.0, help="hang up this long after the answer")
    p.add_argument("--answer-timeout", type=float, default=15.0)
    p.add_argument("--dtmf", action="append", help="DIGITS@SECONDS after the answer; repeatable")
    p.add_argument("--dtmf-info", action="store_true", help="send DTMF as SIP INFO instead of RFC 4733")
    p.add_argument("--echo-db", type=float, help="return the agent's audio to it at this gain (dB, e.g. -12)")
    p.add_argument("--echo-delay-ms", type=int, default=100)
    p.add_argument("--hold-at", type=float, help="put the call on hold this long after the answer (re-INVITE)")
    p.add_argument("--unhold-at", type=float, help="take it off hold at this time")
    p.add_argument("--accept-transfer", action="store_true", help="carry out a REFER instead of declining it")
    p.add_argument("--codec", default="PCMU", help="comma-separated codec preference, e.g. G722,PCMA")
    p.add_argument("--rtp-port", type=int, default=40000)
    p.add_argument("--tcp", action="store_true")
    p.add_argument("--tls-ca", help="call over TLS (a URI with ;transport=tls), trusting the CAs in this PEM file")
    p.add_argument("--tls-cert", help="client certificate (PEM) to present over TLS; needs --tls-key")
    p.add_argument("--tls-key")
    p.add_argument("--loss", type=float, default=0.0, help="drop this percentage of RTP packets each way")
    p.add_argument("--bind", default="127.0.0.1", help="SIP address to bind; empty: every address")
    args = p.parse_args(argv)
    res = run(args)
    print(json.dumps(asdict(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
