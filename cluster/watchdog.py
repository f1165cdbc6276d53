"""A supervisor with systemd's watchdog, for `gearctl cluster up` and deploy/gearctl-runner.

    python -m cluster.watchdog --seconds S -- COMMAND [ARGS...]

Runs COMMAND with `NOTIFY_SOCKET` (an abstract unix socket of its own) and `WATCHDOG_USEC`,
as systemd does for `Type=notify` with `WatchdogSec=S`. Once COMMAND has sent READY=1 or
WATCHDOG=1, it must send WATCHDOG=1 at least every S seconds; when it does not (hung,
SIGSTOPped, stuck in a call) it is killed with SIGKILL, and its gearmand dies with it
(cluster.gearmand_server sets the parent-death signal). SIGTERM and SIGINT are passed on to
COMMAND. The supervisor exits when COMMAND exits, with its status: restarting it is the job of
whatever runs the supervisor. As PID 1 of a PID namespace (the drills' hosts) it also reaps
orphans.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("gearctl.watchdog")

POLL = 0.05  # seconds: how late past its deadline a silent child may be killed


class Supervisor:
    """One child under a watchdog of `seconds` (the deadline may be changed by the child
    with WATCHDOG_USEC=, as systemd allows)."""

    def __init__(self, argv: Sequence[str], seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"the watchdog deadline must be positive, not {seconds}")
        self.argv = list(argv)
        self.seconds = seconds
        self.armed = False
        self.last_ping = time.monotonic()
        self.name = f"@gearctl-watchdog-{os.getpid()}-{secrets.token_hex(4)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind("\0" + self.name[1:])
        self.child: subprocess.Popen[bytes] | None = None
        self.killed = False

    def run(self) -> int:
        env = {**os.environ, "NOTIFY_SOCKET": self.name,
               "WATCHDOG_USEC": str(int(self.seconds * 1e6))}  # fmt: skip
        env.pop("WATCHDOG_PID", None)  # its PID differs from ours, and from inside a namespace
        self.child = subprocess.Popen(self.argv, env=env)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._forward)
        while True:
            status = self._reap()
            if status is not None:
                return status
            readable, _, _ = select.select([self.sock], [], [], POLL)
            if readable:
                self._receive(self.sock.recv(4096).decode(errors="replace"))
            if self.armed and not self.killed and time.monotonic() - self.last_ping > self.seconds:
                silent = time.monotonic() - self.last_ping
                log.error("watchdog: pid %d sent no WATCHDOG=1 for %.2fs (deadline %.2fs); "
                          "killing it", self.child.pid, silent, self.seconds)  # fmt: skip
                self.child.kill()
                self.killed = True

    def _receive(self, datagram: str) -> None:
        for line in datagram.splitlines():
            key, _, value = line.partition("=")
            if line in ("READY=1", "WATCHDOG=1"):
                self.armed, self.last_ping = True, time.monotonic()
            elif key == "WATCHDOG" and value == "trigger":
                self.armed, self.last_ping = True, 0.0
            elif key == "WATCHDOG_USEC" and value.isdigit() and int(value) > 0:
                self.seconds = int(value) / 1e6

    def _reap(self) -> int | None:
        """The child's exit status once it exited; orphans (we may be a PID 1) are reaped."""
        assert self.child is not None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return self.child.returncode if self.child.returncode is not None else 1
            if pid == 0:
                return None
            if pid == self.child.pid:
                self.child.returncode = os.waitstatus_to_exitcode(status)
                code = self.child.returncode
                return 128 - code if code < 0 else code

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        if self.child is not None and self.child.returncode is None:
            os.kill(self.child.pid, signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.watchdog",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--seconds",
        type=float,
        required=True,
        help="kill COMMAND when it sends no WATCHDOG=1 for this long",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("COMMAND missing (give it after --)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return Supervisor(command, args.seconds).run()
    except (ValueError, OSError) as exc:
        print(f"gearctl watchdog: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
