"""Function names the cluster has seen, kept in ZooKeeper so any agent can split job keys right.

A key `P<function>-<unique>` is ambiguous when either part holds '-'; knowing the function names
(gearmand's `status` lists every function with queued jobs) resolves it (design §4).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from urllib.parse import quote, unquote

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError


class FunctionRegistry:
    def __init__(self, zk: KazooClient, path: str) -> None:
        self.zk = zk
        self.path = path
        self.published: set[str] = set()

    def known(self) -> set[str]:
        try:
            children = self.zk.get_children(self.path)
        except NoNodeError:
            return set()
        names = {unquote(child) for child in children}
        self.published |= names
        return names

    def publish(self, names: Iterable[str]) -> None:
        """Record names not recorded yet (one znode each; a name is never removed)."""
        for name in set(names) - self.published:
            with contextlib.suppress(NodeExistsError):
                self.zk.create(f"{self.path}/{quote(name, safe='')}", makepath=True)
            self.published.add(name)
