"""A small test network of separate "hosts" made of Linux network namespaces (design §7).

    root namespace                              namespace gcd-n1 (gcd-n2, gcd-n3 alike)
    bridge gcd-br0 10.231.0.1/24 ── gcd-n1-br ═══ gcd-n1-eth 10.231.0.11/24 (+ lo up)
        (ZooKeeper, stores)                         (node1's agent and its gearmand)

Every interface and namespace created here is named `gcd-*`; `HostNetwork` records what it
created and deletes all of it when the `with` block ends, whatever happened inside. A file lock
keeps two test networks from being built at once (the second waits up to LOCK_WAIT), so that
anything named `gcd-*` found while holding it was left by a run that was killed, and is removed
first.

A host is more than a network namespace: whatever `host_argv` starts there also gets a UTS
namespace of its own (its hostname is the namespace's name) and a PID namespace of its own (a
private /proc; the first process is PID 1 and its death kills every process of the host), so
nothing can tell two hosts apart by hostname or PID table, as on separate machines.

`partition(host)` sets the root end of the host's veth pair down: the namespace end loses its
carrier and every frame either way is dropped (no RST, no ICMP), so TCP in both directions just
stops, as on a cut cable; established connections resume by retransmission after `heal(host)`
if neither end gave up meanwhile. (`iptables` is not installed on the test machine; `ip` from
iproute2 is all this needs, root included.)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cluster.errors import GearctlError

log = logging.getLogger("gearctl.netns")

PREFIX = "gcd-"
BRIDGE = "gcd-br0"
SUBNET = "10.231.0"
BRIDGE_ADDRESS = f"{SUBNET}.1"
LOCK_PATH = Path("/run/gearctl-netns.lock")
LOCK_WAIT = 900.0  # seconds to wait for another test network (one drill at a time per machine)


class NetnsError(GearctlError):
    """The test network cannot be built here (not root, no iproute2, no namespaces)."""


@dataclass(frozen=True)
class Host:
    """One isolated host: a namespace with one veth into the bridge."""

    name: str  # the namespace, e.g. gcd-n1
    address: str  # e.g. 10.231.0.11

    @property
    def veth_root(self) -> str:
        return f"{self.name}-br"  # at most 15 characters: names are checked in HostNetwork

    @property
    def veth_inside(self) -> str:
        return f"{self.name}-eth"


def _ip_binary() -> str:
    path = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise NetnsError("`ip` is not installed; install it with: apt-get install -y iproute2")
    return path


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; NetnsError with its stderr when `check` and it fails."""
    result = subprocess.run([_ip_binary(), *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {result.stderr.strip() or result.stdout}")
    return result


def exec_argv(namespace: str, argv: Sequence[str]) -> list[str]:
    """`argv` run inside `namespace` (`ip netns exec` execs it: the PID stays the program's)."""
    return [_ip_binary(), "netns", "exec", namespace, *argv]


def host_argv(namespace: str, argv: Sequence[str]) -> list[str]:
    """`argv` run as PID 1 of a new host inside `namespace`: own hostname (the namespace's
    name), own PID namespace and /proc. The returned command's PID (`unshare`, which waits)
    is outside; its one child is `argv`, and `unshare` being killed kills it (--kill-child)."""
    return exec_argv(namespace, [
        "unshare", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child",
        "sh", "-c", 'hostname "$0" && exec "$@"', namespace, *argv,
    ])  # fmt: skip


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def links() -> list[str]:
    """Interface names of the root namespace (without the `@peer` suffix)."""
    out = ip("-o", "link", "show").stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def leftovers() -> tuple[list[str], list[str]]:
    """(namespaces, interfaces) named gcd-* that exist now."""
    return (
        [n for n in namespaces() if n.startswith(PREFIX)],
        [i for i in links() if i.startswith(PREFIX)],
    )


def pids_in(namespace: str) -> list[int]:
    result = ip("netns", "pids", namespace, check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def tcp_reachable(namespace: str | None, host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connection to host:port from `namespace` (None: this one) is accepted."""
    code = (
        "import socket,sys\n"
        "try:\n"
        f" socket.create_connection(({host!r},{port}),timeout={timeout}).close()\n"
        "except OSError: sys.exit(1)\n"
    )
    argv = [sys.executable, "-c", code]
    if namespace is not None:
        argv = exec_argv(namespace, argv)
    return subprocess.run(argv, capture_output=True, timeout=timeout + 10).returncode == 0


@dataclass
class HostNetwork:
    """A bridge in the root namespace and `hosts` namespaces plugged into it.

    Use as a context manager: everything it created is deleted on exit, even on an exception;
    `created` lists it, in creation order."""

    hosts: int = 1
    bridge: str = BRIDGE
    bridge_address: str = BRIDGE_ADDRESS
    created: list[str] = field(default_factory=list)
    partitioned: set[str] = field(default_factory=set)
    _lock: int | None = None

    @property
    def members(self) -> list[Host]:
        return [Host(f"{PREFIX}n{i + 1}", f"{SUBNET}.{11 + i}") for i in range(self.hosts)]

    def host(self, name: str) -> Host:
        return next(h for h in self.members if h.name == name)

    def __enter__(self) -> HostNetwork:
        self.check_possible()
        self._lock = self._take_lock()
        try:
            self._remove_leftovers()
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.teardown()

    @staticmethod
    def _take_lock() -> int:
        """The test-network lock (its file descriptor), waiting up to LOCK_WAIT for it."""
        fd = os.open(LOCK_PATH, os.O_CREAT | os.O_RDWR, 0o600)
        deadline = time.monotonic() + LOCK_WAIT
        warned = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise NetnsError(f"another test network is in use ({LOCK_PATH} is locked "
                                     f"for more than {LOCK_WAIT:.0f}s)") from None  # fmt: skip
                if not warned:
                    log.warning("waiting for another test network (%s is locked)", LOCK_PATH)
                    warned = True
                time.sleep(0.5)

    @staticmethod
    def check_possible() -> None:
        if os.geteuid() != 0:
            raise NetnsError("network namespaces need root; run the partition drill as root")
        _ip_binary()

    def _remove_leftovers(self) -> None:
        spaces, interfaces = leftovers()
        for name in spaces:
            log.warning("removing namespace %s left by an earlier run", name)
            self._kill_inside(name)
            ip("netns", "del", name, check=False)
        for name in interfaces:
            log.warning("removing interface %s left by an earlier run", name)
            ip("link", "del", name, check=False)

    def _build(self) -> None:
        try:
            ip("link", "add", self.bridge, "type", "bridge")
        except NetnsError as exc:
            raise NetnsError(f"cannot create the test bridge {self.bridge}: {exc}") from None
        self.created.append(f"link {self.bridge}")
        ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for host in self.members:
            if len(host.veth_inside) > 15:
                raise NetnsError(f"interface name {host.veth_inside} is longer than 15")
            try:
                ip("netns", "add", host.name)
            except NetnsError as exc:
                raise NetnsError(f"cannot create network namespace {host.name}: {exc}") from None
            self.created.append(f"netns {host.name}")
            ip("link", "add", host.veth_root, "type", "veth", "peer", "name", host.veth_inside)
            self.created.append(f"link {host.veth_root}")
            ip("link", "set", host.veth_inside, "netns", host.name)
            ip("link", "set", host.veth_root, "master", self.bridge)
            ip("link", "set", host.veth_root, "up")
            inside = ("-n", host.name)
            ip(*inside, "link", "set", "lo", "up")
            ip(*inside, "addr", "add", f"{host.address}/24", "dev", host.veth_inside)
            ip(*inside, "link", "set", host.veth_inside, "up")
        self._wait_links_up()
        log.info("test network up: %s", ", ".join(self.created))

    def _wait_links_up(self, timeout: float = 5.0) -> None:
        """The bridge forwards only once its ports leave the listening states."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._forwarding(h) for h in self.members):
                return
            time.sleep(0.02)
        raise NetnsError(f"bridge {self.bridge} ports not forwarding after {timeout:.0f}s")

    def _forwarding(self, host: Host) -> bool:
        out = ip("-n", host.name, "-o", "link", "show", host.veth_inside).stdout
        bridge_state = ip("-d", "-o", "link", "show", host.veth_root).stdout
        return "LOWER_UP" in out and "state forwarding" in bridge_state

    def partition(self, name: str) -> None:
        """Cut host `name` off: the root end of its veth goes down (frames dropped both ways)."""
        ip("link", "set", self.host(name).veth_root, "down")
        self.partitioned.add(name)

    def power_off(self, name: str) -> list[int]:
        """Host `name` dies: its link goes down (so its address times out, no RST) and every
        process in it is killed at once. Returns the PIDs killed."""
        self.partition(name)
        killed = pids_in(name)
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        return killed

    def heal(self, name: str) -> None:
        host = self.host(name)
        ip("link", "set", host.veth_root, "up")
        self.partitioned.discard(name)
        self._wait_links_up()

    def _kill_inside(self, namespace: str) -> None:
        """Processes still in a namespace we created (ours: started there by this run)."""
        for pid in pids_in(namespace):
            log.warning("killing pid %d left in namespace %s", pid, namespace)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)

    def teardown(self) -> None:
        """Delete everything created, newest first; never raises (it runs in `finally`)."""
        try:
            for item in reversed(self.created):
                kind, name = item.split(" ", 1)
                if kind == "netns":
                    self._kill_inside(name)
                    result = ip("netns", "del", name, check=False)
                else:
                    result = ip("link", "del", name, check=False)
                if result.returncode != 0 and "Cannot find" not in result.stderr:
                    log.error("teardown: %s: %s", item, result.stderr.strip())
            self.created.clear()
            self.partitioned.clear()
        except Exception:
            log.exception("test network teardown failed")
        finally:
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None
