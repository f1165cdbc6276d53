"""Launch a ZooKeeper server on the jars of Debian's `zookeeper` package.

A standalone server and an ensemble member are configured the same way: an ensemble just lists
its members (`server.N=host:peer:election`) and each member has its own `myid`.
"""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cluster.endpoint import Endpoint
from cluster.errors import LaunchError
from cluster.process import ensure_port_free, require_binary, spawn, wait_until

JARS = ("/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-simple.jar")
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


@dataclass(frozen=True)
class ZooKeeperMember:
    myid: int
    host: str
    peer_port: int
    election_port: int


@dataclass(frozen=True)
class ZooKeeperLaunch:
    endpoint: Endpoint
    data_dir: Path
    log_path: Path
    pid_path: Path
    tick_ms: int = 500
    heap_mb: int = 256
    myid: int = 1
    ensemble: tuple[ZooKeeperMember, ...] = field(default=())

    def config_text(self) -> str:
        lines = [
            f"tickTime={self.tick_ms}",
            "initLimit=10",
            "syncLimit=5",
            f"dataDir={self.data_dir}",
            f"clientPort={self.endpoint.port}",
            f"clientPortAddress={self.endpoint.host}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=srvr,mntr,ruok,stat,conf",
            "autopurge.purgeInterval=1",
        ]
        lines += [
            f"server.{m.myid}={m.host}:{m.peer_port}:{m.election_port}" for m in self.ensemble
        ]
        return "\n".join(lines) + "\n"


def four_letter_word(endpoint: Endpoint, word: str, timeout: float = 1.0) -> str:
    """Send a ZooKeeper four-letter command and return the whole answer ('' if none)."""
    chunks: list[bytes] = []
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(word.encode())
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks).decode(errors="replace")


def zookeeper_serving(endpoint: Endpoint, timeout: float = 1.0) -> bool:
    """True if the server serves requests (`srvr` shows a mode); `ruok` answers without quorum."""
    return zookeeper_mode(endpoint, timeout) is not None


def start_zookeeper(launch: ZooKeeperLaunch, *, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """Start one server and return once it serves (a standalone one, or an ensemble member
    whose quorum is already up)."""
    proc = spawn_zookeeper(launch)
    wait_zookeeper(launch, proc, timeout)
    return proc


def spawn_zookeeper(launch: ZooKeeperLaunch) -> subprocess.Popen[bytes]:
    """Write zoo.cfg and myid and start the JVM; an ensemble's members are all spawned first,
    then waited for, since none serves before a quorum is up."""
    java = require_binary("java", "default-jre-headless")
    missing = [jar for jar in JARS if not Path(jar).exists()]
    if missing:
        raise LaunchError(
            f"ZooKeeper jars missing ({', '.join(missing)}); install: apt-get install -y zookeeper"
        )
    ensure_port_free(launch.endpoint, f"ZooKeeper {launch.endpoint}")
    launch.data_dir.mkdir(parents=True, exist_ok=True)
    (launch.data_dir / "myid").write_text(f"{launch.myid}\n")
    config = launch.data_dir.parent / f"zoo-{launch.myid}.cfg"
    config.write_text(launch.config_text())
    argv = [
        java,
        f"-Xmx{launch.heap_mb}m",
        "-Dzookeeper.admin.enableServer=false",
        "-cp",
        ":".join(JARS),
        MAIN_CLASS,
        str(config),
    ]
    return spawn(argv, log_path=launch.log_path, pid_path=launch.pid_path)


def wait_zookeeper(
    launch: ZooKeeperLaunch, proc: subprocess.Popen[bytes], timeout: float = 60.0
) -> None:
    wait_until(
        lambda: zookeeper_serving(launch.endpoint),
        timeout=timeout,
        what=f"ZooKeeper on {launch.endpoint}",
        alive=lambda: proc.poll() is None,
        log_path=launch.log_path,
        interval=0.2,
    )


def zookeeper_mode(endpoint: Endpoint, timeout: float = 1.0) -> str | None:
    """`standalone`, `leader` or `follower` as `srvr` says; None when it does not serve."""
    for line in four_letter_word(endpoint, "srvr", timeout).splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None
