"""Start, find and stop the service processes gearctl owns: always by PID, never by name."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from cluster.endpoint import Endpoint
from cluster.errors import LaunchError


def require_binary(name: str, debian_package: str) -> str:
    """Return the path of `name`, or fail naming the Debian package that provides it."""
    path = shutil.which(name)
    if path is None:
        raise LaunchError(
            f"{name} is not installed; install it with: apt-get install -y {debian_package}"
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_block(size: int, host: str = "127.0.0.1") -> int:
    """A base port such that base .. base+size-1 can all be bound on `host` right now.

    Blocks come from below the kernel's ephemeral range, so that outgoing connections (which
    take ephemeral ports) cannot grab a port between this check and the server's bind.
    """
    ephemeral_low = _ephemeral_low()
    for _ in range(200):
        base = random.randrange(10000, max(10001, ephemeral_low - size))
        if all(_bindable(host, base + i) for i in range(size)):
            return base
    raise LaunchError(f"no block of {size} free ports found on {host}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def port_holder(port: int) -> str | None:
    """Describe the process listening on `port` (`name (pid N)`), if psutil can tell."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return "an unknown process"
            try:
                return f"{psutil.Process(conn.pid).name()} (pid {conn.pid})"
            except psutil.Error:
                return f"pid {conn.pid}"
    return None


def ensure_port_free(endpoint: Endpoint, what: str) -> None:
    """Raise LaunchError if `endpoint` cannot be bound, naming who holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((endpoint.host, endpoint.port))
        except OSError as exc:
            holder = port_holder(endpoint.port) or "another process"
            raise LaunchError(
                f"cannot start {what}: port {endpoint} is in use by {holder} ({exc.strerror})"
            ) from None


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    pid_path: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session, output appended to `log_path`, PID written to `pid_path`.

    `die_with_parent`: the kernel SIGKILLs the child when the thread that started it ends
    (PR_SET_PDEATHSIG; start it from a thread that lives as long as the process)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=cwd,
                preexec_fn=_pdeathsig_setter(os.getpid()) if die_with_parent else None,
            )
        except OSError as exc:
            raise LaunchError(f"cannot run {argv[0]}: {exc}") from exc
    if pid_path is not None:
        write_pidfile(pid_path, proc.pid)
    return proc


PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the forked child only calls it


def _pdeathsig_setter(parent: int) -> Callable[[], None]:
    """A preexec_fn: SIGKILL on the parent's death; exit at once if it died before the call."""

    def set_pdeathsig() -> None:
        if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(127)

    return set_pdeathsig


def write_pidfile(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def read_pidfile(path: Path) -> int | None:
    """The PID stored in `path`, or None when the file is missing or not a number."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def is_running(pid: int | None) -> bool:
    """True if `pid` is a live process (a zombie counts as dead)."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def boot_id() -> str | None:
    """This kernel's boot id: equal only on the same machine since the same boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def pid_namespace(pid: int | str = "self") -> int | None:
    """The inode of `pid`'s PID namespace (equal inodes: the same namespace), None if gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def pid_inside(pid: int) -> int | None:
    """`pid` (as this process sees it) as seen from inside its own PID namespace."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return pid


def pid_outside(inside: int | None, like: int) -> int | None:
    """The PID, as this process sees it, of the process `inside` of the PID namespace `like`
    lives in (a process in another namespace reports its own PIDs as seen from there)."""
    namespace = pid_namespace(like)
    if inside is None or namespace is None or namespace == pid_namespace():
        return inside
    for pid in psutil.pids():
        if pid_namespace(pid) == namespace and pid_inside(pid) == inside:
            return pid
    return None


def children(pid: int) -> list[int]:
    """The PIDs of `pid`'s live children (none when it is gone)."""
    try:
        return [c.pid for c in psutil.Process(pid).children() if is_running(c.pid)]
    except psutil.Error:
        return []


@dataclass(frozen=True)
class ProcessRef:
    """A PID plus its start time, so a recycled PID is never taken for our process."""

    pid: int
    started: float

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        """The reference of a process we just started (its start time read from /proc)."""
        for _ in range(20):
            try:
                return cls(pid, psutil.Process(pid).create_time())
            except psutil.NoSuchProcess:
                break
            except psutil.Error:
                time.sleep(0.01)  # /proc is briefly unreadable while the child execs
        raise LaunchError(f"process {pid} exited right after it was started")

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return proc.create_time() == self.started and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            stop_pid(self.pid, timeout=timeout)


def is_program_on(pid: int, program: str, port: int) -> bool:
    """True if `pid` runs `program` with `port` on its command line (checks a pidfile's claim)."""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return bool(cmdline) and Path(cmdline[0]).name == program and str(port) in cmdline


def stop_pid(pid: int | None, *, timeout: float = 10.0) -> None:
    """SIGTERM `pid`, wait up to `timeout`, then SIGKILL. Quietly done if it is already gone."""
    if not is_running(pid):
        return
    assert pid is not None
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        raise LaunchError(f"process {pid} did not exit after SIGKILL") from None


def kill_pid(pid: int) -> None:
    """SIGKILL `pid` now (used for fencing); quietly done if it is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def log_tail(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    alive: Callable[[], bool] | None = None,
    log_path: Path | None = None,
    interval: float = 0.05,
) -> None:
    """Poll `check` until it is true; fail early if `alive` turns false, with the log's tail."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if alive is not None and not alive():
            reason = f"{what}: the process exited"
            break
        if time.monotonic() >= deadline:
            reason = f"{what}: not ready after {timeout:.0f}s"
            break
        time.sleep(interval)
    tail = f"\nlast lines of {log_path}:\n{log_tail(log_path)}" if log_path else ""
    raise LaunchError(reason + tail)
