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

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.gearman.admin import AdminClient
from cluster.membership import read_members
from cluster.zkpaths import ClusterPaths


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


def names_served(endpoints: Iterable[Endpoint], timeout: float) -> set[str]:
    """Function names the live gearmands list in `status` (queued jobs or registered workers)."""
    names: set[str] = set()
    for endpoint in endpoints:
        try:
            names.update(f.name for f in AdminClient(endpoint, timeout=timeout).status())
        except GearctlError:
            continue  # a dead or hung server knows nothing we can use
    return names


def known_in_cluster(
    zk: KazooClient, paths: ClusterPaths, registry: FunctionRegistry, own: Endpoint, timeout: float
) -> set[str]:
    """Names recorded in ZooKeeper plus those every member's gearmand knows right now (queued
    jobs or registered workers): a worker for a function anywhere makes its name known."""
    endpoints = {Endpoint.parse(m.gearman) for m in read_members(zk, paths).values()} | {own}
    return registry.known() | names_served(endpoints, timeout)
