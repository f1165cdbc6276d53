"""Function names the cluster has seen, kept in ZooKeeper so any agent can split job keys right.

A key `P<function>-<unique>` is ambiguous when either part holds '-'; knowing the function names
(gearmand's `status` lists every function with queued jobs) resolves it (design §4). What one
agent publishes is bounded (cluster.namebound: size, count, rate): any client may register
names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from cluster.coord import Coordination
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.gearman.admin import AdminClient
from cluster.namebound import NameBound


class FunctionRegistry:
    """The names recorded in ZooKeeper, and which of them this process wrote or saw already."""

    def __init__(self, coord: Coordination, bound: NameBound | None = None) -> None:
        self.coord = coord
        self.published: set[str] = set()
        self.bound = bound or NameBound()

    def known(self) -> set[str]:
        names = self.coord.function_names()
        self.published |= names
        return names

    def publish(self, names: Iterable[str]) -> Counter[str]:
        """Record names not recorded yet, within the bound (one znode each; a name is never
        removed); returns how many were left out, by reason (`size`, `count`, `rate`)."""
        admitted, left_out = self.bound.admit(set(names) - self.published, self.published)
        for name in admitted:
            self.coord.add_function(name)
            self.published.add(name)
        return left_out


def names_served(endpoints: Iterable[Endpoint], timeout: float) -> set[str]:
    """Function names the live gearmands list in `status` (queued jobs or registered workers)."""
    names: set[str] = set()
    for endpoint in endpoints:
        try:
            functions, _ = AdminClient(endpoint, timeout=timeout).status_head()
            names.update(f.name for f in functions)
        except GearctlError:
            continue  # a dead or hung server knows nothing we can use
    return names


def known_in_cluster(registry: FunctionRegistry, own: Endpoint, timeout: float) -> set[str]:
    """Names recorded in ZooKeeper plus those every member's gearmand knows right now (queued
    jobs or registered workers): a worker for a function anywhere makes its name known."""
    members = registry.coord.members().values()
    endpoints = {Endpoint.parse(m.gearman) for m in members} | {own}
    return registry.known() | names_served(endpoints, timeout)
