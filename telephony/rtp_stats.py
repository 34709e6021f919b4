"""A call's RTP/RTCP figures at its end, from pjmedia's stream statistics (pjsua thread), with the E-model's
listening-quality estimate."""

from __future__ import annotations

from typing import Any

from media.emodel import line_quality


def _ms(usec: float) -> float:
    return round(usec / 1000, 1)


def summarize(stat: Any) -> dict[str, Any]:
    """Receive side: packets, lost (sequence gaps), loss %, interarrival jitter mean/max; send side: packets and the
    loss the far end reported in RTCP; round trip from RTCP (None before the first report); the jitter buffer's
    mean delay."""
    rtcp, jb = stat.rtcp, stat.jbuf
    rx, tx = rtcp.rxStat, rtcp.txStat
    rx_expected = int(rx.pkt) + int(rx.loss)
    tx_expected = int(tx.pkt) + int(tx.loss)
    return {
        "rx_pkts": int(rx.pkt), "rx_lost": int(rx.loss),
        "rx_loss_pct": round(100 * int(rx.loss) / rx_expected, 2) if rx_expected else 0.0,
        "rx_jitter_ms": _ms(rx.jitterUsec.mean) if rx.jitterUsec.n else None,
        "rx_jitter_max_ms": _ms(rx.jitterUsec.max) if rx.jitterUsec.n else None,
        "tx_pkts": int(tx.pkt), "tx_lost": int(tx.loss),
        "tx_loss_pct": round(100 * int(tx.loss) / tx_expected, 2) if tx_expected else 0.0,
        "rtt_ms": _ms(rtcp.rttUsec.mean) if rtcp.rttUsec.n else None,
        "jbuf_delay_ms": int(jb.avgDelayMsec),
    }


def with_quality(rtp: dict[str, Any], codec: str) -> dict[str, Any]:
    """`rtp` (from `summarize`) plus the E-model's `delay_ms`, `r_factor`, `r_scale` and `mos` (media.emodel) for
    the worse direction: the higher of the loss we counted and the loss the far end reported in RTCP. No RTP
    received: no estimate (None), since nothing was measured."""
    if not rtp["rx_pkts"]:
        return {**rtp, "delay_ms": None, "r_factor": None, "r_scale": None, "mos": None}
    loss = max(float(rtp["rx_loss_pct"]), float(rtp["tx_loss_pct"]))
    return {**rtp, **line_quality(codec, loss, rtp["rtt_ms"], float(rtp["jbuf_delay_ms"]))}
