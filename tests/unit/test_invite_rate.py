"""Per-source INVITE limit (a sliding window over each source's last INVITEs, refused ones counted) and the INVITE
length limit of a single gateway process."""

from __future__ import annotations

from telephony.invite_rate import SWEEP_ABOVE, InviteLimits, Refusal


def test_a_source_over_its_limit_gets_503_with_retry_after_and_others_are_untouched() -> None:
    lim = InviteLimits(2048, 3, 10.0)
    assert [lim.check("192.0.2.1", 500, t) for t in (0.0, 1.0, 2.0)] == [None, None, None]
    refused = lim.check("192.0.2.1", 500, 3.0)
    assert refused == Refusal(503, "more than 3 INVITEs from 192.0.2.1 in 10 s", {"Retry-After": "8"})
    assert lim.check("192.0.2.2", 500, 3.0) is None
    assert lim.check("192.0.2.1", 500, 9.0) is not None  # the refused ones count: a flooding source stays refused
    assert lim.check("192.0.2.1", 500, 19.5) is None  # quiet for a window: admitted again


def test_an_invite_over_the_size_limit_gets_513_and_none_means_no_rate_limit() -> None:
    lim = InviteLimits(2048, None, 10.0)
    assert all(lim.check("192.0.2.1", 2048, t / 100) is None for t in range(1000))
    assert lim.check("192.0.2.1", 2049, 11.0) == Refusal(513, "the INVITE is 2049 bytes, over the limit of 2048")


def test_idle_sources_are_forgotten() -> None:
    lim = InviteLimits(2048, 2, 1.0)
    for i in range(SWEEP_ABOVE):
        lim.check(f"10.0.{i // 256}.{i % 256}", 100, 0.0)
    lim.check("192.0.2.9", 100, 5.0)
    assert len(lim._seen) == 1
