"""The ZooKeeper session timeout the server granted (negotiated), which kazoo keeps to itself.

ZooKeeper clamps the timeout a client asks for into its own `minSessionTimeout` ..
`maxSessionTimeout` (2 to 20 ticks by default): an agent that asks for 4 s may get 20 s, and then
peers wait that long before they may take its store over. kazoo 2.11 reads the granted value at
every connect but exposes it nowhere (python-zk/kazoo#769); its connection handler's `_connect`
returns the read timeout it derives from it, two thirds of the granted timeout (ms). This module
wraps that one method of one client's handler to remember the value; if a kazoo release changes
the method, the timeout is simply reported as unknown (None), nothing else changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient

log = logging.getLogger("gearctl.zookeeper")


class NegotiatedTimeout:
    """Remembers the session timeout granted at `zk`'s latest connect (seconds; None: unknown)."""

    def __init__(self, zk: KazooClient) -> None:
        self.seconds: float | None = None
        handler = getattr(zk, "_connection", None)
        connect = getattr(handler, "_connect", None)
        if connect is None:
            log.warning("this kazoo does not show the negotiated session timeout")
            return
        setattr(handler, "_connect", self._wrap(connect))  # noqa: B010 - an instance attribute

    def _wrap(self, connect: Callable[..., Any]) -> Callable[..., Any]:
        def connect_and_remember(*args: Any, **kwargs: Any) -> Any:
            result = connect(*args, **kwargs)
            try:
                read_timeout_ms = float(result[0])
            except (TypeError, ValueError, IndexError):
                return result
            self.seconds = round(read_timeout_ms * 1.5 / 1000, 3)
            return result

        return connect_and_remember
