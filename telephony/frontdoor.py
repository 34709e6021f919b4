"""The Kamailio front door of several workers: its config (pure text from the voicegate config) and its process.

Kamailio (Debian `kamailio` 5.6) does what a SIP load balancer must and what no Python library does as well:
the `dispatcher` module sends each new INVITE to a worker (round-robin, or the one with the fewest calls), probes
every worker with OPTIONS and takes one that fails a probe out of the rotation, and moves an INVITE to the next
worker on 486/408/5xx or when the worker does not answer within `failover_timeout_s`; `pike` drops a source that
floods; record-routing keeps in-dialog requests on the worker that has the call. When no worker can take a call
the caller gets `workers.when_full` at once.

It is what the outside sees, so it also does what a single gateway does at its edge: `sip.allow` without
`sip.users` refuses other sources than those and the trunks' with 403 before dispatch (`permissions` module, an
address file written here);
every INVITE it forwards names the caller's address in X-VG-Source, so that the workers admit by it (`sip.users`
digest, trunk addresses) as a single gateway would. A registering trunk registers once, from worker 0 through
the front door with the front door's address as Contact (telephony/workers.py): that keeps registration state,
retries and `voicegate trunks` where they are for one gateway, and no password in Kamailio's files; the carrier's
calls then reach the front door like any other and go to any worker. TLS ends here (`tls` module, Debian
`kamailio-tls-modules`, with the `sip.tls` certificate settings, and a trunk's own client certificate for its
servers: telephony/frontdoor_tls.py); the workers behind speak UDP on loopback.
The `dialog` module keeps each answered call in a `worker` profile, and a JSON-RPC socket (`jsonrpcs`) lets the
supervisor end a dead worker's calls and reload the ACL's addresses (telephony/frontdoor_rpc.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from telephony.config import Config
from telephony.frontdoor_rpc import rpc
from telephony.frontdoor_tls import ROUTE, XAVP, client_profiles
from telephony.frontdoor_tls import route as trunk_tls_route
from telephony.inbound import SOURCE_HEADER, resolve_sources
from telephony.logs import event
from telephony.workers import CALLS_PER_WORKER, WORKER_PARAM, announcing, worker_port

MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
ALGORITHMS = {"round_robin": 4, "least_loaded": 10}
REASONS = {503: "Service Unavailable", 486: "Busy Here", 480: "Temporarily Unavailable"}
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"
"""Debian's CA bundle: whom TLS trusts when `sip.tls.ca_file` is not set."""
RPC_SOCKET = "rpc.sock"
"""Kamailio's JSON-RPC datagram socket, in the front door's folder."""
MARK = "VG"
"""Kamailio's own log lines that voicegate reports as `frontdoor` events start with this."""


def worker_uri(cfg: Config, index: int, count: int) -> str:
    """Local worker `index`'s dispatcher destination, also the value of its calls in the `worker` dialog profile."""
    return f"sip:127.0.0.1:{worker_port(cfg, index, count)}"


def dispatcher_list(cfg: Config, count: int) -> str:
    """Destination set 1: the local workers, then the remote ones, each with a call-load id and its call limit
    (used by least_loaded)."""
    local = [f"1 {worker_uri(cfg, i, count)} 0 0 duid=w{i};maxload={CALLS_PER_WORKER}\n" for i in range(count)]
    remote = [f"1 {uri} 0 0 duid=r{j};maxload={CALLS_PER_WORKER}\n" for j, uri in enumerate(cfg.workers.remote)]
    announcer = [f"2 {worker_uri(cfg, count, count)} 0 0 duid=a0\n"] if announcing(cfg.workers) else []
    return "".join(local + remote + announcer)


def address_list(cfg: Config) -> str:
    """Group 1 of the `permissions` address file (group, address, prefix length, port 0 = any): `sip.allow` and
    every trunk's addresses (its `allow`, what its registrar and outbound proxy resolve to)."""
    nets = [ipaddress.ip_network(a, strict=False) for a in cfg.sip.allow]
    nets += [n for t in cfg.trunks.values() for n in resolve_sources(t)]
    return "".join(f"1 {n.network_address} {n.prefixlen} 0\n" for n in dict.fromkeys(nets))


def _acl(cfg: Config, address_file: Path) -> tuple[str, str]:
    """The module lines and the request-route check of the source ACL. Only `sip.allow` restricts; and the
    workers alone decide when credentials may admit any source (`sip.users`, a trunk's `inbound_auth`)."""
    if not cfg.sip.allow or cfg.sip.users or any(t.inbound_auth for t in cfg.trunks.values()):
        return "", ""
    load = f'loadmodule "permissions.so"\nmodparam("permissions", "address_file", "{address_file}")\n'
    check = ('if (!allow_source_address("1")) {\n'
             f'        xlog("L_NOTICE", "{MARK} refused $ci from $si: not in sip.allow\\n");\n'
             '        sl_send_reply("403", "Forbidden");\n'
             '        exit;\n'
             '    }')
    return load, check


def tls_config(cfg: Config) -> str:
    """The `tls` module's config file: `sip.tls` as a single gateway uses it. The server side ends the callers'
    TLS (mutual with `require_client_cert`); the client side is for trunks the front door connects to and presents
    the listener's certificate, as a single gateway's TLS transport does, except for each trunk with its own
    certificate, which gets a profile of its own (telephony/frontdoor_tls.py)."""
    tls = cfg.sip.tls
    if tls is None:
        return ""
    yes = {True: "yes", False: "no"}
    ca = str(Path(tls.ca_file).expanduser()) if tls.ca_file else SYSTEM_CAS
    return (f"[server:default]\nmethod = TLSv1.2+\ncertificate = {Path(tls.cert_file).expanduser()}\n"
            f"private_key = {Path(tls.key_file).expanduser()}\nca_list = {ca}\n"
            f"verify_certificate = {yes[tls.require_client_cert]}\n"
            f"require_certificate = {yes[tls.require_client_cert]}\n\n"
            f"[client:default]\nmethod = TLSv1.2+\ncertificate = {Path(tls.cert_file).expanduser()}\n"
            f"private_key = {Path(tls.key_file).expanduser()}\nca_list = {ca}\n"
            f"verify_certificate = {yes[tls.verify_server]}\nrequire_certificate = {yes[tls.verify_server]}\n"
            f"{client_profiles(cfg.trunks, ca)}")


def _refuse(cfg: Config, in_failure_route: bool) -> str:
    """Kamailio lines for a call no worker takes: the configured reply, or the announcer (set 2), or 486 if it is
    unreachable. A failure route replies statefully (t_reply), the request route statelessly."""
    full = cfg.workers.when_full
    send = "t_reply" if in_failure_route else "sl_send_reply"
    lines = [f'xlog("L_NOTICE", "{MARK} full $ci\\n");']
    if full.reply == "announcement":
        lines += ['if (ds_select_dst("2", "4")) {', f'    xlog("L_NOTICE", "{MARK} announce $ci to $du\\n");',
                  "    $sht(calls=>$ci) = $du;", *([] if in_failure_route else ["    dlg_manage();"]),
                  '    t_on_reply("ANSWER");', "    t_relay();", "    exit;", "}", "$sht(calls=>$ci) = $null;",
                  f'{send}("486", "{REASONS[486]}");']
    else:
        code = int(full.reply)
        lines += ["$sht(calls=>$ci) = $null;"]
        if code == 503:
            lines.append(f'append_to_reply("Retry-After: {full.retry_after_s}\\r\\n");')
        lines.append(f'{send}("{code}", "{REASONS[code]}");')
    return "\n        ".join([*lines, "exit;"])


def _load_params(cfg: Config) -> str:
    """Call-load tracking (least_loaded): a call whose BYE never passes (its worker died) stops counting once it
    would have reached `timeouts.max_call_s`, one never answered after a minute."""
    expire = int(cfg.timeouts.max_call_s) + 60
    return "\n".join(['modparam("dispatcher", "ds_hash_size", 8)',
                      f'modparam("dispatcher", "ds_hash_expire", {expire})',
                      'modparam("dispatcher", "ds_hash_initexpire", 60)'])


LOCAL_BYE_UNLOAD = """
event_route[tm:local-request] {
    # a BYE the dialog module sends (dlg.end_dlg: its worker died) passes no route of ours: the call's load
    # leaves its worker here, once per call (the first of its two BYEs)
    if (is_method("BYE") && $sht(calls=>$ci) != $null) {
        $sht(calls=>$ci) = $null;
        ds_load_update();
    }
}
"""
"""least_loaded: Kamailio's dispatcher counts a call on its worker until a BYE passes `ds_load_update()`. The BYEs
of `dlg.end_dlg` are Kamailio's own and pass only `tm:local-request`; without this the dead worker's calls counted
until `ds_hash_expire`, and a worker restarted after dying with 4 calls got none (its `maxload`). The dialog module's
`dialog:end` event would not do: for `dlg.end_dlg` it runs on a stand-in message (dlg_bye_all in Kamailio's source),
whose Call-ID is not the call's."""


def _dialog_params(cfg: Config, rpc_socket: Path) -> str:
    """Dialog tracking, so that the supervisor can end the calls of a worker that died (`dlg.end_dlg` over the
    JSON-RPC socket, telephony/frontdoor_rpc.py): every answered call joins the `worker` profile with its worker's
    URI as value; matching by Call-ID and tags alone (no cookie in Record-Route); a dialog whose BYE never came
    is forgotten once it would have reached `timeouts.max_call_s`."""
    return "\n".join(['modparam("dialog", "dlg_match_mode", 2)',
                      'modparam("dialog", "profiles_with_value", "worker")',
                      f'modparam("dialog", "default_timeout", {int(cfg.timeouts.max_call_s) + 60})',
                      'modparam("jsonrpcs", "transport", 4)',
                      f'modparam("jsonrpcs", "dgram_socket", "{rpc_socket}")'])


def kamailio_config(cfg: Config, list_file: Path, modules: Path = MODULES) -> str:
    w = cfg.workers
    acl_load, acl_check = _acl(cfg, list_file.with_name("address.list"))
    least = w.dispatch == "least_loaded"
    public = cfg.sip.public_address
    listen = ""
    for proto in cfg.sip.transports:
        port = cfg.sip.tls.port if proto == "tls" and cfg.sip.tls is not None else cfg.sip.port
        listen += f"listen={proto}:{cfg.sip.listen}:{port}{f' advertise {public}:{port}' if public else ''}\n"
        for alias in filter(None, (public, "127.0.0.1" if cfg.sip.listen == "0.0.0.0" else None)):
            listen += f"alias={alias}:{port}\n"  # myself: the public address, and where the workers send
    tls_load = ""
    if "tls" in cfg.sip.transports:
        tls_load = (f'enable_tls=yes\nloadmodule "tls.so"\n'
                    f'modparam("tls", "config", "{list_file.with_name("tls.cfg")}")\n'
                    f'modparam("tls", "xavp_cfg", "{XAVP}")\n')
    trunk_tls = trunk_tls_route(cfg.trunks) if "tls" in cfg.sip.transports else ""
    to_trunk = f"route({ROUTE});" if trunk_tls else ""  # the trunk's own TLS certificate (frontdoor_tls.py)
    return f"""#!KAMAILIO
debug=1
log_stderror=yes
fork=yes
children=2
tcp_children=1
auto_aliases=no
{listen}mpath="{modules}"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "pike.so"
loadmodule "dispatcher.so"
loadmodule "htable.so"
loadmodule "dialog.so"
loadmodule "jsonrpcs.so"
{acl_load}{tls_load}modparam("tm", "fr_timer", {int(w.failover_timeout_s * 1000)})
modparam("tm", "fr_inv_timer", 120000)
modparam("rr", "enable_full_lr", 1)
modparam("rr", "append_fromtag", 0)
modparam("dispatcher", "list_file", "{list_file}")
modparam("dispatcher", "flags", 2)
modparam("dispatcher", "xavp_dst", "_dsdst_")
modparam("dispatcher", "xavp_ctx", "_dsctx_")
modparam("dispatcher", "ds_ping_method", "OPTIONS")
modparam("dispatcher", "ds_ping_from", "sip:frontdoor@voicegate.invalid")
modparam("dispatcher", "ds_ping_interval", {w.probe_interval_s})
modparam("dispatcher", "ds_probing_mode", 1)
modparam("dispatcher", "ds_probing_threshold", 1)
modparam("dispatcher", "ds_inactive_threshold", 1)
modparam("dispatcher", "ds_ping_reply_codes", "class=2")
{_load_params(cfg) if least else ''}
modparam("htable", "htable", "calls=>size=10;autoexpire=7200;")
{_dialog_params(cfg, list_file.with_name(RPC_SOCKET))}
modparam("pike", "sampling_time_unit", {w.flood_window_s})
modparam("pike", "reqs_density_per_unit", {w.flood_requests})
modparam("pike", "remove_latency", {w.flood_block_s})

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if ($ml > {w.max_message_bytes}) {{ sl_send_reply("513", "Message Too Large"); exit; }}
    if (!sanity_check("1511", "7")) {{ xlog("L_NOTICE", "{MARK} malformed request from $si:$sp\\n"); exit; }}
    if (!ds_is_from_list() && !pike_check_req()) {{ exit; }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (!is_method("ACK")) {{
        if (t_precheck_trans()) {{ t_check_trans(); exit; }}
        t_check_trans();
    }}
    if (has_totag()) {{
        $var(w) = $(ru{{uri.param,{WORKER_PARAM}}});
        if (!ds_is_from_list() && uri==myself && ($var(w) != "" || $sht(calls=>$ci) != $null)) {{
            # to a Contact that names the front door: a worker's (sip.public_address) names its port, a trunk
            # registration's does not (the worker that took the Call-ID)
            remove_hf("Route");
            if ($var(w) != "") {{
                $du = "sip:127.0.0.1:" + $var(w);
            }} else {{
                $du = $sht(calls=>$ci);
            }}
            if (is_method("BYE")) {{ $sht(calls=>$ci) = $null; }}
            {'if (is_method("BYE")) { ds_load_update(); }' if least else ''}
            dlg_manage();
            t_relay();
            exit;
        }}
        if (loose_route()) {{
            if (is_method("BYE")) {{ $sht(calls=>$ci) = $null; }}
            {'if (is_method("BYE")) { ds_load_update(); }' if least else ''}
            {to_trunk}
            t_relay();
            exit;
        }}
        if (is_method("ACK") && t_check_trans()) {{ t_relay(); exit; }}
        # a peer that ignored Record-Route: the worker that took the Call-ID
        if ($sht(calls=>$ci) != $null) {{
            $du = $sht(calls=>$ci);
            if (is_method("BYE")) {{ $sht(calls=>$ci) = $null; }}
            {'if (is_method("BYE")) { ds_load_update(); }' if least else ''}
            dlg_manage();
            t_relay();
            exit;
        }}
        if (!is_method("ACK")) {{ sl_send_reply("481", "Call Does Not Exist"); }}
        exit;
    }}
    if (ds_is_from_list()) {{
        # a worker's own request (a trunk's REGISTER, a call out) through the front door: to its Request-URI
        loose_route();
        {to_trunk}
        if (is_method("INVITE")) {{ record_route(); }}
        if (!t_relay()) {{ sl_reply_error(); }}
        exit;
    }}
    remove_hf("Route");
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "OK"); exit; }}
    if (!is_method("INVITE")) {{
        append_to_reply("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\\r\\n");
        sl_send_reply("405", "Method Not Allowed");
        exit;
    }}
    {acl_check}
    remove_hf("{SOURCE_HEADER}");
    append_hf("{SOURCE_HEADER}: $siz:$sp\\r\\n");
    record_route();
    if (!ds_select_dst("1", "{ALGORITHMS[w.dispatch]}")) {{
        {_refuse(cfg, False)}
    }}
    xlog("L_NOTICE", "{MARK} invite $ci to $du\\n");
    $sht(calls=>$ci) = $du;
    dlg_manage();
    t_on_failure("NEXT");
    t_on_reply("ANSWER");
    if (!t_relay()) {{ sl_reply_error(); }}
    exit;
}}

failure_route[NEXT] {{
    if (t_is_canceled()) {{ exit; }}
    $var(dead) = 0;
    if (t_branch_timeout() && !t_branch_replied()) {{ $var(dead) = 1; }}
    if ($var(dead) == 1 || t_check_status("503")) {{
        xlog("L_NOTICE", "{MARK} worker out $xavp(_dsdst_=>uri) status $T_reply_code\\n");
        ds_mark_dst("ip");
    }}
    if ($var(dead) == 1 || t_check_status("486|408|5[0-9][0-9]")) {{
        if (ds_next_dst()) {{
            xlog("L_NOTICE", "{MARK} failover $ci to $du\\n");
            $sht(calls=>$ci) = $du;
            t_on_failure("NEXT");
            t_on_reply("ANSWER");
            t_relay();
            exit;
        }}
        {'ds_load_unset();' if least else ''}
        {_refuse(cfg, True)}
    }}
    {'ds_load_unset();' if least else ''}
    $sht(calls=>$ci) = $null;
}}

onreply_route[ANSWER] {{
    if (status =~ "2[0-9][0-9]") {{
        {'ds_load_update();' if least else ''}
        if (!is_in_profile("worker", "$sht(calls=>$ci)")) {{ set_dlg_profile("worker", "$sht(calls=>$ci)"); }}
    }}
}}
event_route[dispatcher:dst-down] {{
    xlog("L_NOTICE", "{MARK} worker down $ru\\n");
}}

event_route[dispatcher:dst-up] {{
    xlog("L_NOTICE", "{MARK} worker up $ru\\n");
}}
{LOCAL_BYE_UNLOAD if least else ''}{trunk_tls}"""


class FrontDoor:
    """One Kamailio process (its own process group) with the config written into a fresh folder."""

    def __init__(self, cfg: Config, count: int) -> None:
        self.cfg = cfg
        self.count = count
        self.dir = Path(tempfile.mkdtemp(prefix="voicegate-frontdoor-"))
        self.proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    def write(self) -> Path:
        """Write the config and check it with `kamailio -c`; raise naming Kamailio's complaint."""
        lst = self.dir / "dispatcher.list"
        lst.write_text(dispatcher_list(self.cfg, self.count))
        (self.dir / "address.list").write_text(address_list(self.cfg))
        (self.dir / "tls.cfg").write_text(tls_config(self.cfg))
        path = self.dir / "kamailio.cfg"
        path.write_text(kamailio_config(self.cfg, lst))
        try:
            check = subprocess.run([self.cfg.workers.kamailio, "-c", "-f", str(path)], capture_output=True, text=True)
        except OSError as e:
            raise RuntimeError(f"cannot run kamailio ({self.cfg.workers.kamailio}, workers.kamailio; Debian package "
                               f"kamailio): {e.strerror or e}") from None
        if check.returncode != 0:
            raise RuntimeError(f"kamailio rejected the front door config {path}: {check.stderr.strip()[-1500:]}")
        return path

    def reload_acl(self, cfg: Config) -> bool:
        """Give the running Kamailio the source ACL with the trunks of `cfg` (a reload): rewrite the address file
        and have `permissions` read it again (RPC). Whether the ACL changed; raises RuntimeError when the reload
        would turn the ACL on or off, which changes the routing script (a restart), and when a trunk's own TLS
        certificate or its servers change (its profile and route in Kamailio's config: a restart too)."""
        new = self.cfg.model_copy(update={"trunks": cfg.trunks})
        path = self.dir / "address.list"
        on, was_on = bool(_acl(new, path)[0]), bool(_acl(self.cfg, path)[0])
        if on != was_on:
            raise RuntimeError("the front door's source ACL would turn " + ("on" if on else "off") +
                               " (sip.allow with trunks' inbound_auth): restart voicegate for that")
        if tls_config(new) != tls_config(self.cfg) or trunk_tls_route(new.trunks) != trunk_tls_route(self.cfg.trunks):
            raise RuntimeError("a trunk's own TLS certificate (trunks.NAME.tls) or its servers changed, which the "
                               "front door presents from its Kamailio config: restart voicegate for that")
        self.cfg = new
        if not on or path.read_text() == (text := address_list(new)):
            return False
        path.write_text(text)
        rpc(self.dir / RPC_SOCKET, "permissions.addressReload")
        return True

    async def start(self, preexec: Callable[[], None] | None = None) -> int:
        """Start Kamailio; `preexec` runs in the child before it (the supervisor's die-with-parent)."""
        path = self.dir / "kamailio.cfg"
        self.proc = await asyncio.create_subprocess_exec(
            self.cfg.workers.kamailio, "-f", str(path), "-DD", "-E", "-m", "64", "-M", "8", "-Y", str(self.dir),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=self.dir,
            start_new_session=True, preexec_fn=preexec)  # its own process group: stop() ends every child
        self._pump = asyncio.ensure_future(self._read(self.proc))
        return self.proc.pid

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        """Our routing lines become `frontdoor` events; Kamailio's own errors (one or more per malformed request)
        `frontdoor_error` events, at most one a second, each counting those left out since the last."""
        assert proc.stderr is not None
        last, skipped = 0.0, 0
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if f": {MARK} " in line:
                event("frontdoor", msg=line.split(f": {MARK} ", 1)[1][:300])
            elif "ERROR" in line or "CRITICAL" in line or "ALERT" in line:
                now = time.monotonic()
                if now - last < 1.0:
                    skipped += 1
                    continue
                event("frontdoor_error", msg=line[-300:], skipped=skipped)
                last, skipped = now, 0

    async def wait(self) -> int:
        assert self.proc is not None
        rc = await self.proc.wait()
        if self._pump is not None:
            await asyncio.wait({self._pump}, timeout=1.0)
        return rc

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole group (a child holding a lock can hang Kamailio's shutdown)."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # children the main process left behind

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
