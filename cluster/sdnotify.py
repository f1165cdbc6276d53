"""systemd's notify protocol, service side: READY=1 and WATCHDOG=1 to $NOTIFY_SOCKET.

Under systemd (`Type=notify`, `WatchdogSec=`) and under `cluster.watchdog` (the supervisor of
`gearctl cluster up` and deploy/gearctl-runner) the agent is given `NOTIFY_SOCKET` and
`WATCHDOG_USEC`; elsewhere both are unset and every call here does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from cluster.errors import ConfigError

log = logging.getLogger("gearctl.sdnotify")


def notify(message: str) -> bool:
    """Send one datagram (e.g. "READY=1") to $NOTIFY_SOCKET; False when there is none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify the supervisor (%s): %s", message, exc)
        return False
    return True


def watchdog_seconds() -> float | None:
    """The supervisor's watchdog deadline ($WATCHDOG_USEC), None when there is no watchdog.

    systemd also sets $WATCHDOG_PID: the deadline is meant for that process only."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    owner = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (owner.isdigit() and int(owner) != os.getpid()):
        return None
    return int(usec) / 1e6


class WatchdogPing:
    """WATCHDOG=1 from the fencing loop, only while it proves gearmand may serve that long.

    `alive(deadline)` pings only while `deadline` (after the agent's own fence, due at the send
    time of the last answered heartbeat + `timeout - margin`, and two guard polls before the
    earliest expiry of its session) is at least one watchdog period away: a supervisor that
    then hears nothing for a period kills agent and gearmand after the fence would have been
    due (it never races the fence) and before the session can expire. `fenced()` pings
    unconditionally: gearmand is already killed, nothing is left to protect, the agent lives."""

    def __init__(self, fence_after: float) -> None:
        self.seconds = watchdog_seconds()
        if self.seconds is not None and self.seconds >= fence_after:
            raise ConfigError(
                f"the watchdog deadline ({self.seconds:g}s, WATCHDOG_USEC / WatchdogSec) must be "
                f"below zookeeper.session_timeout - safety_margin ({fence_after:g}s); half of "
                "it is a good value"
            )

    def alive(self, deadline: float) -> None:
        if self.seconds is not None and deadline - time.monotonic() >= self.seconds:
            notify("WATCHDOG=1")

    def fenced(self) -> None:
        if self.seconds is not None:
            notify("WATCHDOG=1")
