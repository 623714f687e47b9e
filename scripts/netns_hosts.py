"""Two test "hosts" on one machine, for MPI across hosts (tests/test_mpi_netns.py, benches/ddp.py):
two network namespaces joined by a veth pair whose ends hold loopback-range addresses
(127.1.0.1 and 127.1.0.2: route_localnet lets the kernel route them off the loopback device),
an rsh agent that runs a command "on" a host inside its namespace (what ssh does between real
hosts), and a hostfile. Needs root and iproute2's ``ip``; ``two_hosts()`` always deletes what it made.

mpirun runs inside the first namespace; Open MPI starts its daemon on the second host through the
agent, and ranks talk over TCP on the veth link only (``mpirun_options``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUBNET = "127.1.0.0/24"


@dataclass
class Hosts:
    namespaces: tuple[str, str]
    veths: tuple[str, str]
    addresses: tuple[str, str]
    agent: Path
    hostfile: Path

    def mpirun_options(self) -> list[str]:
        """mpirun's flags for these hosts: the agent, and TCP on the veth subnet for both Open MPI's
        own control channel and the ranks' messages. The hosts share one hostname and one /dev/shm, so
        the collectives that would meet in shared memory are left out (basic, libnbc: messages only)."""
        return ["--hostfile", str(self.hostfile), "--map-by", "node", "--prtemca", "plm_ssh_agent", str(self.agent),
                "--prtemca", "oob_tcp_if_include", SUBNET, "--mca", "pml", "ob1", "--mca", "btl", "tcp,self",
                "--mca", "btl_tcp_if_include", SUBNET, "--mca", "coll", "basic,libnbc,self"]

    def in_first(self, command: list[str]) -> list[str]:
        """``command`` run in the first host's namespace (where mpirun starts)."""
        return ["ip", "netns", "exec", self.namespaces[0], *command]

    def tx_bytes(self, host: int) -> int:
        """Bytes the host's end of the link has sent."""
        out = subprocess.run(["ip", "netns", "exec", self.namespaces[host], "cat",
                              f"/sys/class/net/{self.veths[host]}/statistics/tx_bytes"],
                             check=True, capture_output=True, text=True)
        return int(out.stdout)


def unavailable() -> str | None:
    """Why namespaced hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def two_hosts(tag: str | None = None) -> Iterator[Hosts]:
    tag = tag or f"l{os.getpid() % 100000}"
    ns = (f"{tag}a", f"{tag}b")
    veths = (f"{tag}va", f"{tag}vb")  # (interface names: at most 15 characters)
    addresses = ("127.1.0.1", "127.1.0.2")
    workdir = Path(tempfile.mkdtemp(prefix="lmcore-netns-"))
    made: list[str] = []
    try:
        for name in ns:
            _ip("netns", "add", name)
            made.append(name)
        _ip("link", "add", veths[0], "type", "veth", "peer", "name", veths[1])
        for name, veth, address in zip(ns, veths, addresses, strict=True):
            _ip("link", "set", veth, "netns", name)
            run = ("ip", "netns", "exec", name)
            # 127.0.0.1 stays the namespace's own loopback; the rest of 127/8 is routed to the link.
            for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "del", "127.0.0.1/8", "dev", "lo"],
                        ["ip", "addr", "add", "127.0.0.1/32", "dev", "lo"],
                        ["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1",
                         f"net.ipv4.conf.{veth}.route_localnet=1"],
                        ["ip", "addr", "add", f"{address}/24", "dev", veth], ["ip", "link", "set", veth, "up"]):
                subprocess.run([*run, *cmd], check=True, capture_output=True, text=True)
        agent = workdir / "agent.sh"
        cases = "\n".join(f"  {a}) ns={n} ;;" for a, n in zip(addresses, ns, strict=True))
        agent.write_text(f"""#!/bin/sh
# rsh agent for the namespaced hosts: "HOST COMMAND..." runs COMMAND in HOST's namespace, as ssh would.
host=$1; shift
case "$host" in
{cases}
  *) echo "agent: unknown host $host" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" /bin/sh -c "$*"
""")
        agent.chmod(0o755)
        hostfile = workdir / "hostfile"
        hostfile.write_text("".join(f"{a} slots=1\n" for a in addresses))
        yield Hosts(ns, veths, addresses, agent, hostfile)
    finally:
        for name in made:  # (the veth pair goes with its namespaces)
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
