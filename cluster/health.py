"""Is gearmand healthy? Process state first (cheap), then the admin `status` with a read timeout.

A SIGSTOPped gearmand still accepts TCP connections and never answers, so only the read timeout
or psutil's `stopped` state reveal it.
"""

from __future__ import annotations

import enum

import psutil

from cluster.admin import is_serving
from cluster.endpoint import Endpoint


class Health(enum.Enum):
    SERVING = "serving"
    GONE = "gone"  # exited, or a zombie
    STOPPED = "stopped"  # SIGSTOP / traced: alive but frozen
    UNRESPONSIVE = "unresponsive"  # running, but `status` did not answer in time


def check_gearmand(pid: int, endpoint: Endpoint, timeout: float) -> Health:
    try:
        status = psutil.Process(pid).status()
    except psutil.Error:
        return Health.GONE
    if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
        return Health.GONE
    if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
        return Health.STOPPED
    return Health.SERVING if is_serving(endpoint, timeout) else Health.UNRESPONSIVE
