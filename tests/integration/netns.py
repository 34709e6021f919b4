"""A NAT lab from Linux network namespaces, for tests of callers behind NAT.

Three namespaces joined by two veth pairs, each with its own stack and firewall, so the host's network is
never touched:

    caller 192.168.77.2 ── 192.168.77.1 router 198.18.77.1 ── 198.18.77.2 server

The router forwards and masquerades what leaves its WAN side (nftables, in the router's namespace) onto ports
40000-40999, so neither the address nor the port a peer sees is the one the caller wrote in SIP and SDP, and, like
a home router, lets in from the WAN only packets of connections the LAN opened. The server's default route points
at the router, but the private 192.168.77.0/24 is unreachable from it except through those NAT mappings, so a
peer that sends media to the address in a NATed caller's SDP loses it. `ip netns del` removes everything.

`two_hosts` is the plainer lab of two machines on one link (a front door and a worker elsewhere):

    front 198.18.78.1 ── 198.18.78.2 back
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

CALLER_IP = "192.168.77.2"
ROUTER_LAN_IP = "192.168.77.1"
ROUTER_WAN_IP = "198.18.77.1"
SERVER_IP = "198.18.77.2"
FRONT_IP = "198.18.78.1"
BACK_IP = "198.18.78.2"

_RULES = """
table ip vgnat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" meta l4proto { tcp, udp } masquerade to :40000-40999
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" accept
    ct state established,related accept
  }
}
"""


@dataclass(frozen=True)
class NatLab:
    caller: str
    router: str
    server: str

    def cmd(self, ns: str, args: Sequence[str]) -> list[str]:
        """`args` run inside namespace `ns`."""
        return ["ip", "netns", "exec", ns, *args]


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def unavailable() -> str | None:
    """Why this machine cannot build the lab (not root, a tool missing, no namespaces), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [t for t in ("ip", "nft", "tcpdump", "sipp") if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (make deps installs them)"
    probe = f"vgprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def need_lab() -> None:
    """Skip the calling test when this machine cannot build the lab, but fail it under CI (`CI` set): CI runs
    `make test` as root (.ci/run; the Makefile needs no sudo then), so a lab test it skips would pass unseen."""
    why = unavailable()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI needs the network namespace lab: {why}")
    pytest.skip(f"no network namespace lab here: {why}")


@contextlib.contextmanager
def nat_lab() -> Iterator[NatLab]:
    """Build the lab (names unique to this process), yield it, remove it."""
    tag = os.getpid()
    lab = NatLab(f"vgc{tag}", f"vgr{tag}", f"vgs{tag}")
    made: list[str] = []
    try:
        for ns in (lab.caller, lab.router, lab.server):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("link", "add", "eth0", "netns", lab.caller, "type", "veth", "peer", "name", "lan", "netns", lab.router)
        _ip("link", "add", "wan", "netns", lab.router, "type", "veth", "peer", "name", "eth0", "netns", lab.server)
        for ns, dev, addr in ((lab.caller, "eth0", CALLER_IP), (lab.router, "lan", ROUTER_LAN_IP),
                              (lab.router, "wan", ROUTER_WAN_IP), (lab.server, "eth0", SERVER_IP)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        for ns in made:
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", lab.caller, "route", "add", "default", "via", ROUTER_LAN_IP)
        _ip("-n", lab.server, "route", "add", "default", "via", ROUTER_WAN_IP)
        subprocess.run(lab.cmd(lab.router, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]), check=True, timeout=10)
        subprocess.run(lab.cmd(lab.router, ["nft", "-f", "-"]), input=_RULES, text=True, check=True, timeout=10)
        yield lab
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@dataclass(frozen=True)
class TwoHosts:
    front: str
    back: str

    def cmd(self, ns: str, args: Sequence[str]) -> list[str]:
        """`args` run inside namespace `ns`."""
        return ["ip", "netns", "exec", ns, *args]


@contextlib.contextmanager
def two_hosts() -> Iterator[TwoHosts]:
    """Two namespaces joined by one veth pair (FRONT_IP, BACK_IP), names unique to this process; removed after."""
    tag = os.getpid()
    hosts = TwoHosts(f"vgf{tag}", f"vgb{tag}")
    made: list[str] = []
    try:
        for ns in (hosts.front, hosts.back):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("link", "add", "eth0", "netns", hosts.front, "type", "veth", "peer", "name", "eth0", "netns", hosts.back)
        for ns, addr in ((hosts.front, FRONT_IP), (hosts.back, BACK_IP)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield hosts
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
