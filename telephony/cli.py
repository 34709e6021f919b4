"""`voicegate` command: serve, check, simulate, calls, trunks, audit, erase, purge, dial."""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from agents.config import EngineLoadError
from telephony.config import Config, ConfigError, issue_at, load_config
from telephony.errors import VoicegateError

if TYPE_CHECKING:
    from telephony.retention import Removal


def _config(path: str) -> Config | None:
    """The config at `path`, or None after printing its errors (file:line each)."""
    try:
        return load_config(path)
    except ConfigError as e:
        for issue in e.issues:
            print(issue, file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
        _check_engines(cfg, args.config)
    except ConfigError as e:
        for issue in e.issues:
            print(issue, file=sys.stderr)
        print(f"{args.config}: {len(e.issues)} error(s)", file=sys.stderr)
        return 1
    print(f"{args.config}: OK")
    return 0


def _check_engines(cfg: Config, path: str) -> None:
    """Load each speech engine the agents name, as `serve` would: ConfigError at the line of each that fails."""
    import asyncio

    from agents.engines import check_engines

    errors = asyncio.run(check_engines(cfg.agents))
    if errors:
        raise ConfigError([issue_at(path, e.loc, e.message) for e in errors])


def _serve(args: argparse.Namespace) -> int:
    from telephony.app import Gateway
    from telephony.logs import setup_logging

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        for issue in e.issues:
            print(issue, file=sys.stderr)
        print(f"voicegate: not starting, {args.config} has {len(e.issues)} error(s)", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    count = cfg.workers.count if args.workers is None else args.workers
    if args.worker_index is None and (count > 1 or args.workers is not None or cfg.workers.remote):
        return _supervise(cfg, args.config, count)
    from telephony.workers import behind_front_door

    derive = None
    if args.worker_index is not None:
        from functools import partial

        from telephony.logs import tag_events
        from telephony.workers import worker_config

        derive = partial(worker_config, index=args.worker_index, count=count)  # a reload derives from the file again
        tag_events(worker=args.worker_index)
    try:
        import uvloop

        gateway = Gateway(cfg, args.config, args.worker_index, derive)
        with ops_sinks(gateway.config, serve=args.worker_index is None or not behind_front_door(cfg.workers, count)):
            uvloop.run(gateway.run())
    except VoicegateError as e:
        print(f"voicegate: {e}", file=sys.stderr)
        return 3
    except EngineLoadError as e:
        print(issue_at(args.config, e.loc, e.message), file=sys.stderr)
        print(f"voicegate: not starting, a speech engine of {args.config} does not load", file=sys.stderr)
        return 2
    return 0


def _supervise(cfg: Config, config_path: str, count: int) -> int:
    """`serve --workers N`: the supervisor of N workers (and of the Kamailio front door when N > 1 or
    workers.remote lists gateways on other machines)."""
    from telephony.supervisor import Supervisor
    from telephony.workers import fit_problem

    if not 1 <= count <= 64:
        print("voicegate serve: --workers takes 1 to 64", file=sys.stderr)
        return 2
    if problem := fit_problem(cfg.workers, count, cfg.sip, cfg.rtp, cfg.trunks):
        print(f"voicegate: not starting {count} workers with {config_path}: {problem}", file=sys.stderr)
        return 2
    import uvloop

    return uvloop.run(Supervisor(cfg, config_path, count).run())


@contextlib.contextmanager
def ops_sinks(cfg: Config, serve: bool = True) -> Iterator[None]:
    """The event sinks of operations (metrics and /healthz), subscribed for the gateway's life; a worker behind the
    front door keeps its metrics for the supervisor to serve (`serve` False; telephony/cluster_metrics.py)."""
    from telephony.logs import subscribe
    from telephony.metrics import GatewayMetrics, OpsServer

    if not cfg.metrics.enabled:
        yield
        return
    metrics = GatewayMetrics(lambda called: (r.match if (r := cfg.route_for(called)) else ""))
    server = OpsServer(metrics, cfg.metrics.listen, cfg.metrics.port, cfg.metrics.token) if serve else None
    unsubscribe = subscribe(metrics)
    try:
        yield
    finally:
        unsubscribe()
        if server is not None:
            server.close()


def _simulate(args: argparse.Namespace) -> int:
    from telephony.endpoint import EXPECTED_MAX_CALLS
    from telephony.simulator.simulate import main as simulate

    if not 0 <= args.loss <= 50:
        print("voicegate simulate: --loss takes a percentage from 0 to 50", file=sys.stderr)
        return 2
    if args.calls is not None and not (1 <= args.calls <= 10000 and 1 <= args.concurrency <= 64 and args.rate > 0):
        print("voicegate simulate: --calls 1-10000, --concurrency 1-64 and --rate > 0", file=sys.stderr)
        return 2
    if args.duration is not None:
        if args.duration <= 0:
            print("voicegate simulate: --duration takes a positive number of seconds", file=sys.stderr)
            return 2
        args.calls = 10000 if args.calls is None else args.calls
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key or args.insecure:
        from telephony.simulator.relay_tls import TlsOptions, TlsOptionsError

        tls = TlsOptions(args.tls_ca, args.tls_cert, args.tls_key, args.insecure)
        try:
            tls.check()
        except TlsOptionsError as e:
            print(f"voicegate simulate: {e}", file=sys.stderr)
            return 2
    if not 1 <= args.calls_per_phone <= EXPECTED_MAX_CALLS:
        print(f"voicegate simulate: --calls-per-phone takes 1 to {EXPECTED_MAX_CALLS} (pjsua2's compiled call limit)",
              file=sys.stderr)
        return 2
    return simulate(args.scripts, args.target, args.junit, args.json, args.rtp_port, args.calls, args.concurrency,
                    args.rate, args.html, args.loss, args.record, args.seed, args.jitter, args.reorder, args.skew,
                    args.duration, tls, args.calls_per_phone, args.sip_trace)


def _calls(args: argparse.Namespace) -> int:
    from telephony.records import newest, read_records, table, totals, write_csv

    if args.last < 1:
        print("voicegate calls: --last takes a positive number", file=sys.stderr)
        return 2
    if args.records:
        path = Path(args.records)
    else:
        cfg = _config(args.config)
        if cfg is None:
            return 2
        path = Path(cfg.records.path)
    try:
        records, bad = read_records(path)
    except OSError as e:
        where = "" if args.records else f" (records.path of {args.config})"
        print(f"voicegate calls: cannot read {path}{where}: {e.strerror or e}", file=sys.stderr)
        return 1
    for note in bad:
        print(f"voicegate calls: skipped {note}", file=sys.stderr)
    shown = newest(records, args.last)
    if args.csv == "-":
        write_csv(shown, sys.stdout)
        return 0
    if args.csv:
        try:
            with open(args.csv, "w", newline="", encoding="utf-8") as f:
                write_csv(shown, f)
        except OSError as e:
            print(f"voicegate calls: cannot write {args.csv}: {e.strerror or e}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({"calls": shown, "totals": totals(shown)}, indent=1))
    elif not shown:
        print(f"no calls recorded in {path}")
    else:
        print("\n".join(table(shown)))
    return 0


def _trunks(args: argparse.Namespace) -> int:
    from telephony.trunk_status import read_status, status_table

    cfg = _config(args.config)
    if cfg is None:
        return 2
    if not cfg.trunks:
        print(f"no trunks configured in {args.config}")
        return 0
    path = Path(cfg.trunk_status_path)
    try:
        doc = read_status(path)
    except (OSError, ValueError) as e:
        print(f"voicegate trunks: no status in {path} (trunk_status_path of {args.config}; is voicegate serve "
              f"running with this config?): {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print("\n".join(status_table(doc, sorted(cfg.trunks))))
    return 0


def _config_path(args: argparse.Namespace, key: str, override: str | None) -> Path | None:
    """`override` if given, else `records.<key>` of `--config` (None, with the config's errors printed)."""
    if override:
        return Path(override)
    cfg = _config(args.config)
    return None if cfg is None else Path(getattr(cfg.records, key))


def _audit_verify(args: argparse.Namespace) -> int:
    from telephony.audit import verify

    path = _config_path(args, "audit_path", args.audit)
    if path is None:
        return 2
    try:
        v = verify(path)
    except OSError as e:
        print(f"voicegate audit: cannot read {path}: {e.strerror or e}", file=sys.stderr)
        return 2
    if not v.ok:
        print(f"voicegate audit: {v.problem}", file=sys.stderr)
        print(f"{path}: the first {v.entries} entries are intact, up to head {v.head}", file=sys.stderr)
        return 1
    print(f"{path}: {v.entries} entries intact, head {v.head}")
    return 0


def _erase(args: argparse.Namespace) -> int:
    from telephony.retention import erase

    records = _config_path(args, "path", args.records)
    audit = _config_path(args, "audit_path", args.audit)
    if records is None or audit is None:
        return 2
    try:
        out = erase(records, audit, args.caller, args.reason)
    except (OSError, sqlite3.Error) as e:
        why = (e.strerror or str(e)) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        print(f"voicegate erase: cannot erase from {records}: {why}", file=sys.stderr)
        return 1
    return _report("erase", f"erased {len(out.calls)} call(s) and {out.files_removed} file(s) of caller "
                   f"{args.caller}", out)


def _purge(args: argparse.Namespace) -> int:
    from telephony.retention import purge

    cfg = _config(args.config)
    if cfg is None:
        return 2
    try:
        out = purge(cfg)
    except (OSError, sqlite3.Error) as e:
        why = (e.strerror or str(e)) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        print(f"voicegate purge: cannot purge {cfg.records.path}: {why}", file=sys.stderr)
        return 1
    if out.audit_seq is None and not out.errors:
        print(f"no retention_days set in {args.config}: nothing is purged")
        return 0
    return _report("purge", f"purged {len(out.calls)} call(s) and {out.files_removed} file(s)", out)


def _report(cmd: str, done: str, out: Removal) -> int:
    for err in out.errors:
        print(f"voicegate {cmd}: {err}", file=sys.stderr)
    print(done + ("" if out.audit_seq is None else f"; audit entry {out.audit_seq}"))
    return 1 if out.errors else 0


def _dial(args: argparse.Namespace) -> int:
    """Ask the running gateway (its control endpoint) to place a call."""
    import httpx

    cfg = _config(args.config)
    if cfg is None:
        return 2
    if cfg.control is None:
        print(f"voicegate dial: {args.config} has no control section (listen, port, token_env)", file=sys.stderr)
        return 2
    c = cfg.control
    url = f"http://{c.listen if c.listen not in ('0.0.0.0', '::') else '127.0.0.1'}:{c.port}/calls"
    body: dict[str, object] = {"number": args.number, "agent": args.agent, "ring_s": args.ring}
    if args.trunk:
        body["trunk"] = args.trunk
    if args.amd:
        body["amd"] = {"machine": args.amd, "message": args.message}
    try:
        r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {c.token}"}, timeout=20.0)
    except httpx.HTTPError as e:
        print(f"voicegate dial: cannot reach the gateway at {url} (is voicegate serve running with "
              f"{args.config}?): {e}", file=sys.stderr)
        return 1
    try:
        out = r.json()
    except ValueError:
        out = {"error": r.text[:200]}
    if r.status_code != 201:
        print(f"voicegate dial: refused ({r.status_code}): {out.get('error', out)}", file=sys.stderr)
        return 1
    print(json.dumps(out) if args.json else f"calling {out['uri']} as {out['caller_id']} with agent {out['agent']}: "
          f"call {out['call']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voicegate", description="Telephony gateway for voice AI agents")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="answer calls with the configured agents")
    s.add_argument("--config", default="voicegate.yaml")
    s.add_argument("--workers", type=int, help="run this many supervised worker processes (more than one: behind a "
                   "Kamailio front door on sip.port); overrides workers: in the config")
    s.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    s.set_defaults(fn=_serve)
    c = sub.add_parser("check", help="validate a config file and name every error")
    c.add_argument("config")
    c.set_defaults(fn=_check)
    m = sub.add_parser("simulate", help="run QA call scripts against a SIP target")
    m.add_argument("scripts", nargs="+", help="script YAML files")
    m.add_argument("--target", help="SIP URI to call (overrides each script's target)")
    m.add_argument("--junit", help="write a JUnit XML report here")
    m.add_argument("--json", help="write a JSON report here")
    m.add_argument("--html", help="write a self-contained HTML report (timelines per call) here")
    m.add_argument("--rtp-port", type=int, default=40000, help="first RTP port of the simulated phone")
    m.add_argument("--loss", type=float, default=0.0, help="drop this percentage of RTP packets each way")
    m.add_argument("--jitter", type=float, default=0.0, help="delay RTP packets each way by 0 to 2x this many ms "
                   "(in order)")
    m.add_argument("--reorder", type=float, default=0.0, help="hold back this percentage of RTP packets each way, "
                   "so the next ones overtake them")
    m.add_argument("--skew", type=float, default=0.0, help="the far end's clock runs this many ppm slow (negative: "
                   "fast), each way")
    m.add_argument("--seed", type=int, help="seed of the random drops (--loss): the same seed drops the same packets")
    m.add_argument("--record", help="write each call as a stereo WAV (caller left, agent right) into this folder")
    m.add_argument("--calls", type=int, help="load mode: place this many calls in all (bounded: at most 10000)")
    m.add_argument("--concurrency", type=int, default=4, help="load mode: calls at once")
    m.add_argument("--calls-per-phone", type=int, default=4, help="load mode: calls one phone process holds at once "
                   "(1-4; 4 is pjsua2's compiled limit)")
    m.add_argument("--rate", type=float, default=2.0, help="load mode: calls started per second, at most")
    m.add_argument("--tls-ca", help="a sips: or ;transport=tls target's certificate must be signed by a CA in this "
                   "PEM file")
    m.add_argument("--tls-cert", help="client certificate (PEM) for a TLS target that asks for one; needs --tls-key")
    m.add_argument("--tls-key")
    m.add_argument("--insecure", action="store_true", help="accept any certificate from a TLS target (labs only)")
    m.add_argument("--duration", type=float, help="load mode: start no call after this many seconds (--calls, "
                   "default then 10000, bounds the count); a phone places a new call as soon as one of its calls ended")
    m.add_argument("--sip-trace", metavar="DIR", help="write each failed call's SIP messages and the phone's pjsua "
                   "log while it lasted into DIR/<Call-ID>.log")
    m.set_defaults(fn=_simulate)
    r = sub.add_parser("calls", help="list recent calls from the call records, newest first, with cost")
    r.add_argument("--config", default="voicegate.yaml", help="read records.path from this config")
    r.add_argument("--records", help="the records file (overrides --config)")
    r.add_argument("--last", type=int, default=20, help="how many calls to list (default 20)")
    r.add_argument("--json", action="store_true", help="print the records and totals as JSON")
    r.add_argument("--csv", metavar="FILE", help="also write the listed calls' CDR columns as CSV here ('-': stdout "
                   "instead of the table)")
    r.set_defaults(fn=_calls)
    t = sub.add_parser("trunks", help="show each trunk's registration state (from a running voicegate serve)")
    t.add_argument("--config", default="voicegate.yaml", help="read trunks and trunk_status_path from this config")
    t.add_argument("--json", action="store_true", help="print the status file as JSON")
    t.set_defaults(fn=_trunks)
    a = sub.add_parser("audit", help="the hash-chained audit log")
    a.add_argument("action", choices=["verify"], help="verify: check every entry's hash and link to the one before")
    a.add_argument("--config", default="voicegate.yaml", help="read records.audit_path from this config")
    a.add_argument("--audit", help="the audit log (overrides --config)")
    a.set_defaults(fn=_audit_verify)
    e = sub.add_parser("erase", help="delete a caller's call records and recordings, and log it in the audit log")
    e.add_argument("--caller", required=True, help="the caller's number (the user part of the From URI)")
    e.add_argument("--reason", default="", help="why (a request reference), kept in the audit entry")
    e.add_argument("--config", default="voicegate.yaml", help="read records.path and audit_path from this config")
    e.add_argument("--records", help="the records database (overrides --config)")
    e.add_argument("--audit", help="the audit log (overrides --config)")
    e.set_defaults(fn=_erase)
    g = sub.add_parser("purge", help="delete calls older than their route's retention_days (run it daily)")
    g.add_argument("--config", default="voicegate.yaml")
    g.set_defaults(fn=_purge)
    d = sub.add_parser("dial", help="ask the running gateway to call a number (on a trunk) or a SIP URI with an agent")
    d.add_argument("number", help="a number the trunk's `allowed` patterns allow, or a SIP URI (control.allow_uris)")
    d.add_argument("--agent", required=True)
    d.add_argument("--trunk", help="the trunk to call out on (default: the one trunk with `allowed` numbers)")
    d.add_argument("--ring", type=float, default=60.0, help="seconds to ring before giving up (1-300)")
    d.add_argument("--config", default="voicegate.yaml", help="read control (address, token_env) from this config")
    d.add_argument("--amd", choices=["hangup", "message"], help="detect who answers: the agent talks to a person; "
                   "a machine is hung up on, or gets --message after its beep; an intercept (SIT) is hung up on")
    d.add_argument("--message", default="", help="what to leave on a machine (with --amd message)")
    d.add_argument("--json", action="store_true", help="print the answer as JSON")
    d.set_defaults(fn=_dial)
    args = p.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
