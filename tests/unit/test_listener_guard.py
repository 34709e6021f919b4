"""Listeners other machines can reach need a guard: a bearer token (media stream, metrics) or an allow list
(AudioSocket, whose protocol has no credentials); config validation names the `listen` line otherwise."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from telephony.config import ConfigError, parse_config
from telephony.metrics import GatewayMetrics, OpsServer

BASE = "agents: {echo: {type: echo}}\nroutes: [{match: '*', agent: echo}]\n"


def issues(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + text, "vg.yaml")
    return [(i.line, i.field, i.message) for i in e.value.issues]


@pytest.mark.parametrize(("section", "needs"), [
    ("metrics:\n  enabled: true\n  listen: 0.0.0.0\n", "metrics.token_env"),
    ("transports:\n  media_stream:\n    agent: echo\n    listen: 192.0.2.1\n", "transports.media_stream.token_env"),
    ("transports:\n  audiosocket:\n    agent: echo\n    listen: '::'\n", "transports.audiosocket.allow"),
])
def test_a_listener_off_loopback_without_a_guard_is_refused_at_its_listen_line(section: str, needs: str) -> None:
    [(line, field, message)] = issues(section)
    assert line == BASE.count("\n") + section.count("\n") and field.endswith(".listen"), (line, field)
    assert needs in message and "not a loopback address" in message, message


def test_a_guarded_or_loopback_listener_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VG_T", "s3cret")
    cfg = parse_config(BASE + "metrics: {listen: 0.0.0.0, token_env: VG_T}\ntransports:\n"
                       "  media_stream: {agent: echo, listen: 0.0.0.0, token_env: VG_T}\n"
                       "  audiosocket: {agent: echo, listen: 0.0.0.0, allow: [192.0.2.0/24, '2001:db8::1']}\n")
    assert cfg.metrics.token == "s3cret"
    au = cfg.transports.audiosocket
    assert au is not None
    assert au.admits("192.0.2.77") and au.admits("::ffff:192.0.2.77") and au.admits("2001:db8::1")
    assert not au.admits("198.51.100.1") and not au.admits("127.0.0.1")
    loopback = parse_config(BASE + "metrics: {listen: '::1'}\ntransports: {audiosocket: {agent: echo}}\n")
    assert loopback.metrics.token is None and loopback.transports.audiosocket is not None
    assert loopback.transports.audiosocket.admits("10.1.2.3")  # no allow list: any peer of the loopback listener


def test_the_metrics_token_must_be_set() -> None:
    [(line, field, message)] = issues("metrics:\n  token_env: VG_SURELY_UNSET\n")
    assert (line, field) == (4, "metrics.token_env") and "VG_SURELY_UNSET" in message, (line, field, message)


def test_the_ops_server_refuses_requests_without_the_token() -> None:
    server = OpsServer(GatewayMetrics(lambda _: ""), "127.0.0.1", 0, token="s3cret")
    base = f"http://127.0.0.1:{server.port}"

    def status(path: str, auth: str | None) -> int:
        req = urllib.request.Request(base + path, headers={"Authorization": auth} if auth else {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return e.code

    try:
        assert [status(p, None) for p in ("/metrics", "/healthz")] == [401, 401]
        assert status("/metrics", "Bearer wrong") == 401 and status("/metrics", "s3cret") == 401
        assert status("/metrics", "Bearer s3cret") == 200
        assert status("/healthz", "Bearer s3cret") == 503  # starting: authenticated, so the health is answered
    finally:
        server.close()
