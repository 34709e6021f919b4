"""A real Kamailio (Debian `kamailio` 5.6) as the carrier side of a trunk: registrar with digest auth and a proxy
that sends every INVITE to the contact registered for one user, keeping the dialled number in To. With `uas_port`,
it also carries calls out: an INVITE to a number starting with OUT_PREFIX is challenged (407, digest with the same
password) and, once it carries credentials, relayed to the UAS on that port.

The password is fixed in the config (`pv_auth_check` with a plaintext password), so no subscriber database is
needed. Its log (stderr, `-E`) carries one `KAM` line per decision for the tests to read. With `tls_port` and
`pki` (ca, cert, key) it also speaks TLS, presenting that certificate as server and as client (to a front door
that asks for one), verifying no server; with `client_ca` it requires a client certificate that CA signed, and
logs the common name of each REGISTER's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
REALM = "voicegate.test"
OUT_PREFIX = "4940"
OUTBOUND = """
    if (has_totag()) {{
        if (is_method("ACK") && !t_check_trans()) {{ exit; }}  # the ACK of a 407: absorbed
        t_relay();
        exit;
    }}
    if (is_method("INVITE") && $rU =~ "^{prefix}") {{
        if (!pv_auth_check("{realm}", "{password}", "0", "0")) {{
            xlog("L_NOTICE", "KAM challenge-invite $rU from $fU auth=$au\\n");
            auth_challenge("{realm}", "0");
            exit;
        }}
        consume_credentials();
        $ru = "sip:" + $rU + "@127.0.0.1:{uas_port}";
        xlog("L_NOTICE", "KAM outbound $rU from $fU auth=$au to $ru\\n");
        t_relay();
        exit;
    }}"""

CFG = """#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=1
tcp_children=1
auto_aliases=no
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
{tls_listen}mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
{tls_load}modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", 5)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}{outbound}
    if (is_method("REGISTER")) {{
        if (!pv_auth_check("{realm}", "{password}", "0", "1")) {{
            xlog("L_NOTICE", "KAM challenge $tU auth=$au\\n");
            auth_challenge("{realm}", "0");
            exit;
        }}
        if (!save("location")) {{ sl_reply_error(); exit; }}{tls_log}
        xlog("L_NOTICE", "KAM registered $tU contact=$ct expires=$hdr(Expires) proto=$pr src=$si:$sp\\n");
        exit;
    }}
    if (is_method("OPTIONS") && !has_totag()) {{
        xlog("L_NOTICE", "KAM options from $fU src=$si:$sp\\n");
        sl_send_reply("200", "OK");
        exit;
    }}
    if (is_method("INVITE") && !has_totag()) {{
        $ru = "sip:{user}@{realm}";
        if (!lookup("location")) {{
            xlog("L_NOTICE", "KAM no contact for {user}\\n");
            sl_send_reply("480", "Trunk Not Registered");
            exit;
        }}
        xlog("L_NOTICE", "KAM invite $tU to $ru\\n");
    }}
    t_relay();
}}
"""


@dataclass
class Kamailio:
    port: int
    workdir: Path
    password: str
    user: str
    uas_port: int | None = None
    """Where calls out (to OUT_PREFIX numbers) go, once authenticated; none: not carried."""
    tls_port: int | None = None
    pki: tuple[Path, Path, Path] | None = None
    client_ca: Path | None = None
    """Require of TLS clients a certificate this CA signed."""
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)

    def start(self, timeout: float = 10.0) -> None:
        cfg = self.workdir / "kamailio.cfg"
        outbound = "" if self.uas_port is None else OUTBOUND.format(
            prefix=OUT_PREFIX, realm=REALM, password=self.password, uas_port=self.uas_port)
        tls_listen = tls_load = tls_log = ""
        if self.tls_port is not None and self.pki is not None:
            _, cert, key = self.pki
            keys = f"certificate = {cert}\nprivate_key = {key}\n"
            loose = "verify_certificate = no\nrequire_certificate = no\n"
            server = loose if self.client_ca is None else (
                f"ca_list = {self.client_ca}\nverify_certificate = yes\nrequire_certificate = yes\n")
            (self.workdir / "tls.cfg").write_text(f"[server:default]\n{keys}{server}\n[client:default]\n{keys}{loose}")
            if self.client_ca is not None:
                tls_log = ('\n        if ($pr == "tls") { xlog("L_NOTICE", "KAM tls-client $tU '
                           'cn=$tls_peer_subject_cn\\n"); }')
            tls_listen = f"listen=tls:127.0.0.1:{self.tls_port}\nenable_tls=yes\n"
            tls_load = f'loadmodule "tls.so"\nmodparam("tls", "config", "{self.workdir / "tls.cfg"}")\n'
        cfg.write_text(CFG.format(port=self.port, modules=MODULES, realm=REALM, password=self.password,
                                  user=self.user, outbound=outbound, tls_listen=tls_listen, tls_load=tls_load,
                                  tls_log=tls_log))
        check = subprocess.run(["/usr/sbin/kamailio", "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr[-3000:]
        self.proc = subprocess.Popen(
            ["/usr/sbin/kamailio", "-f", str(cfg), "-DD", "-E", "-m", "32", "-M", "8", "-Y", str(self.workdir),
             "-P", str(self.workdir / "kamailio.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=self.workdir,
            start_new_session=True,  # its own process group, so stop() can end every child
        )
        proc = self.proc

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.lines.append(line.rstrip("\n"))

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is None and self._listening() and any("processes (at least)" in ln for ln in self.lines):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("kamailio did not start:\n" + "\n".join(self.lines[-30:]))

    def _listening(self) -> bool:
        out = subprocess.run(["ss", "-lntH", f"sport = :{self.port}"], capture_output=True, text=True).stdout
        return str(self.port) in out

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole process group: Kamailio's shutdown can hang on a lock a child held
        (seen here once), and a surviving child would keep the port."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:  # the main process is alive, so its group id is still its own
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        deadline = time.monotonic() + 5
        while self._listening() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.proc = None

    def log(self, word: str) -> list[str]:
        return [ln for ln in list(self.lines) if f"KAM {word}" in ln]

    def wait_log(self, word: str, timeout: float = 10.0, count: int = 1) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(found := self.log(word)) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"kamailio logged {count} x 'KAM {word}' not within {timeout}s:\n"
                             + "\n".join(self.lines[-30:]))
