"""Is gearmand healthy? Process state first (cheap), then the admin `version` with a read timeout.

A SIGSTOPped gearmand still accepts TCP connections and never answers, so only the read timeout
or psutil's `stopped` state reveal it. Health rests on `version`, a one-line answer, never on the
size of `status`: a client that registers many function names makes `status` as large as it
likes. The function names (which the agent publishes so that job keys can be split right after a
crash) are then read from at most `STATUS_NAMES_BYTES` of `status`; a cut list or a `status` that
fails leaves the health alone and says so (`functions_complete`).
"""

from __future__ import annotations

import enum
import functools
import time
from dataclasses import dataclass

import psutil

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.gearman.admin import AdminClient


class Health(enum.Enum):
    SERVING = "serving"
    GONE = "gone"  # exited, or a zombie
    STOPPED = "stopped"  # SIGSTOP / traced: alive but frozen
    UNRESPONSIVE = "unresponsive"  # running, but `status` did not answer in time


@dataclass(frozen=True)
class Check:
    health: Health
    functions: tuple[str, ...] = ()
    functions_complete: bool = True  # False: `status` was cut at its size bound or failed


@functools.lru_cache(maxsize=8)
def _process(pid: int) -> psutil.Process:
    """psutil's handle of `pid`, made once (making one reads /proc again): `status()` reads the
    state of whatever process has the pid now, as a new handle would."""
    return psutil.Process(pid)


def check_gearmand(pid: int, admin: AdminClient) -> Check:
    """`admin` may keep its connection open between checks (`keep_open=True`): a check is then
    its round trips (`version`, `status`), no connect and close."""
    try:
        status = _process(pid).status()
    except psutil.Error:
        return Check(Health.GONE)
    if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
        return Check(Health.GONE)
    if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
        return Check(Health.STOPPED)
    try:
        admin.version()
    except GearctlError:
        return Check(Health.UNRESPONSIVE)
    try:
        functions, complete = admin.status_head()
    except GearctlError:
        return Check(Health.SERVING, (), functions_complete=False)
    return Check(Health.SERVING, tuple(f.name for f in functions), complete)


@dataclass
class HangWatch:
    """Health checks of one gearmand while something else runs (a restore), at most one per
    `interval`: `ok()` turns False after `limit` failed checks in a row (hung or dead)."""

    pid: int
    endpoint: Endpoint
    timeout: float
    interval: float
    limit: int
    failures: int = 0
    last: Health = Health.SERVING
    _next_at: float = 0.0

    def ok(self) -> bool:
        now = time.monotonic()
        if now >= self._next_at:
            self._next_at = now + self.interval
            admin = AdminClient(self.endpoint, timeout=self.timeout)
            self.last = check_gearmand(self.pid, admin).health
            self.failures = 0 if self.last is Health.SERVING else self.failures + 1
        return self.failures < self.limit
