"""The agent's supervisor watchdog (cluster.watchdog), gearmand's parent-death signal, and the
take-over rule's verdicts (cluster.fencing.old_server_is_dead) on local sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cluster import fencing
from cluster.coord import StoreRecord
from cluster.fencing import FENCING_FAILED, old_server_is_dead
from cluster.process import boot_id, is_running, pid_namespace, wait_until

CHILD = textwrap.dedent("""
    import sys, time
    from cluster import sdnotify
    sdnotify.notify("READY=1")
    for _ in range(int(sys.argv[1])):
        sdnotify.notify("WATCHDOG=1")
        time.sleep(0.05)
    time.sleep(float(sys.argv[2]))
""")


def supervise(pings: int, then_sleep: float) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cluster.watchdog", "--seconds", "0.5", "--",
            sys.executable, "-c", CHILD, str(pings), str(then_sleep)]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.integration
def test_a_child_that_stops_pinging_is_killed() -> None:
    result = supervise(pings=5, then_sleep=30)
    assert result.returncode == 128 + signal.SIGKILL
    assert "sent no WATCHDOG=1 for" in result.stderr


@pytest.mark.integration
def test_a_child_that_pings_runs_to_its_end() -> None:
    result = supervise(pings=20, then_sleep=0)
    assert result.returncode == 0, result.stderr
    assert "killing" not in result.stderr


@pytest.mark.integration
def test_gearmand_dies_with_the_thread_that_started_it(tmp_path: Path) -> None:
    """A parent started with spawn(die_with_parent=True) children: SIGKILL it, they die."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from cluster.process import spawn
        child = spawn(["sleep", "300"], log_path=Path({str(tmp_path / "log")!r}),
                      die_with_parent=True)
        print(child.pid, flush=True)
        time.sleep(300)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert is_running(child)
    parent.kill()
    parent.wait()
    wait_until(lambda: not is_running(child), timeout=10, what="the child's death")


def record(port: int, pid: int | None = None, here: bool = False) -> StoreRecord:
    return StoreRecord("127.0.0.1:1", f"127.0.0.1:{port}", "any-host", pid,
                       boot_id() if here else None, pid_namespace() if here else None)  # fmt: skip


def test_a_refused_connection_is_dead_by_the_lease_rule() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        dead, how = old_server_is_dead(record(port))
    assert dead and how.endswith("refuses connections: dead by the lease rule")


def test_an_unreachable_host_is_dead_by_the_lease_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    def times_out(*_args: object, **_kwargs: object) -> None:
        raise TimeoutError("timed out")

    monkeypatch.setattr(fencing.socket, "create_connection", times_out)
    dead, how = old_server_is_dead(record(4730))
    assert dead and "cannot be reached (timed out): dead by the lease rule" in how


def test_one_that_keeps_answering_is_never_taken_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fencing, "SHUTDOWN_CONFIRM", 0.3)
    with socket.create_server(("127.0.0.1", 0)) as server:
        dead, how = old_server_is_dead(record(server.getsockname()[1]), timeout=0.1)
    assert not dead and how.startswith(FENCING_FAILED)


def test_the_pid_shortcut_needs_the_same_kernel_and_pid_namespace() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        dead, how = old_server_is_dead(record(port, gone.pid, here=True))
        assert dead and how == f"gearmand pid {gone.pid} is gone (same kernel, PID namespace)"
        # a record without them (another host, or an older agent): the PID means nothing here
        assert record(port, os.getpid()).same_pid_table() is False


@pytest.mark.integration
def test_the_runner_kills_and_restarts_a_command_that_stops_pinging(tmp_path: Path) -> None:
    """deploy/gearctl-runner --watchdog: the same deadline as systemd's WatchdogSec."""
    runner = str(Path(__file__).resolve().parents[1] / "deploy" / "gearctl-runner")
    pidfile, log = tmp_path / "run" / "child.pid", tmp_path / "child.log"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    python = str(Path(sys.executable).parent / "python")
    start = [runner, "start", str(pidfile), str(log), "root", "--watchdog", "0.5", "--",
             python, str(script), "3", "30"]  # fmt: skip
    try:
        started = subprocess.run(start, capture_output=True, text=True, timeout=30)
        assert started.returncode == 0 and "started" in started.stdout, started.stderr
        wait_until(lambda: log.read_text().count("sent no WATCHDOG=1") >= 2, timeout=30,
                   what="two watchdog kills (the runner restarted it after the first)")  # fmt: skip
        assert "exited; restarting in 1 s" in log.read_text()
    finally:
        subprocess.run([runner, "stop", str(pidfile)], capture_output=True, timeout=60)
    bad = subprocess.run([runner, "start", str(pidfile), str(log), "root", "--watchdog", "soon",
                          "--", python], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert bad.returncode == 2 and "--watchdog soon: not a number of seconds" in bad.stderr
