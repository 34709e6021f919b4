"""`voicegate` command: serve, check, simulate, calls, trunks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from telephony.config import ConfigError, load_config
from telephony.errors import VoicegateError


def _check(args: argparse.Namespace) -> int:
    try:
        load_config(args.config)
    except ConfigError as e:
        for issue in e.issues:
            print(issue, file=sys.stderr)
        print(f"{args.config}: {len(e.issues)} error(s)", file=sys.stderr)
        return 1
    print(f"{args.config}: OK")
    return 0


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
    try:
        import uvloop

        uvloop.run(Gateway(cfg).run())
    except VoicegateError as e:
        print(f"voicegate: {e}", file=sys.stderr)
        return 3
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from telephony.simulator.simulate import main as simulate

    if not 0 <= args.loss <= 50:
        print("voicegate simulate: --loss takes a percentage from 0 to 50", file=sys.stderr)
        return 2
    if args.calls is not None and not (1 <= args.calls <= 10000 and 1 <= args.concurrency <= 64 and args.rate > 0):
        print("voicegate simulate: --calls 1-10000, --concurrency 1-64 and --rate > 0", file=sys.stderr)
        return 2
    return simulate(args.scripts, args.target, args.junit, args.json, args.rtp_port, args.calls, args.concurrency,
                    args.rate, args.html, args.loss, args.record)


def _calls(args: argparse.Namespace) -> int:
    from telephony.records import newest, read_records, table, totals

    if args.last < 1:
        print("voicegate calls: --last takes a positive number", file=sys.stderr)
        return 2
    if args.records:
        path = Path(args.records)
    else:
        try:
            path = Path(load_config(args.config).records.path)
        except ConfigError as e:
            for issue in e.issues:
                print(issue, file=sys.stderr)
            return 2
    try:
        records, bad = read_records(path)
    except OSError as e:
        where = "" if args.records else f" (records.path of {args.config})"
        print(f"voicegate calls: cannot read {path}{where}: {e.strerror or e}", file=sys.stderr)
        return 1
    for note in bad:
        print(f"voicegate calls: skipped {note}", file=sys.stderr)
    shown = newest(records, args.last)
    if args.json:
        print(json.dumps({"calls": shown, "totals": totals(shown)}, indent=1))
    elif not shown:
        print(f"no calls recorded in {path}")
    else:
        print("\n".join(table(shown)))
    return 0


def _trunks(args: argparse.Namespace) -> int:
    from telephony.trunk_status import read_status, status_table

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        for issue in e.issues:
            print(issue, file=sys.stderr)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voicegate", description="Telephony gateway for voice AI agents")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="answer calls with the configured agents")
    s.add_argument("--config", default="voicegate.yaml")
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
    m.add_argument("--record", help="write each call as a stereo WAV (caller left, agent right) into this folder")
    m.add_argument("--calls", type=int, help="load mode: place this many calls in all (bounded: at most 10000)")
    m.add_argument("--concurrency", type=int, default=4, help="load mode: calls at once (one process each)")
    m.add_argument("--rate", type=float, default=2.0, help="load mode: calls started per second, at most")
    m.set_defaults(fn=_simulate)
    r = sub.add_parser("calls", help="list recent calls from the call records, newest first, with cost")
    r.add_argument("--config", default="voicegate.yaml", help="read records.path from this config")
    r.add_argument("--records", help="the records file (overrides --config)")
    r.add_argument("--last", type=int, default=20, help="how many calls to list (default 20)")
    r.add_argument("--json", action="store_true", help="print the records and totals as JSON")
    r.set_defaults(fn=_calls)
    t = sub.add_parser("trunks", help="show each trunk's registration state (from a running voicegate serve)")
    t.add_argument("--config", default="voicegate.yaml", help="read trunks and trunk_status_path from this config")
    t.add_argument("--json", action="store_true", help="print the status file as JSON")
    t.set_defaults(fn=_trunks)
    args = p.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
