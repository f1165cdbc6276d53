"""Function names the cluster has seen, kept in ZooKeeper so any agent can split job keys right.

A key `P<function>-<unique>` is ambiguous when either part holds '-'; knowing the function names
(gearmand's `status` lists every function with queued jobs) resolves it (design §4).
"""

from __future__ import annotations

from collections.abc import Iterable

from cluster.coord import Coordination
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.gearman.admin import AdminClient


class FunctionRegistry:
    """The names recorded in ZooKeeper, and which of them this process wrote or saw already."""

    def __init__(self, coord: Coordination) -> None:
        self.coord = coord
        self.published: set[str] = set()

    def known(self) -> set[str]:
        names = self.coord.function_names()
        self.published |= names
        return names

    def publish(self, names: Iterable[str]) -> None:
        """Record names not recorded yet (one znode each; a name is never removed)."""
        for name in set(names) - self.published:
            self.coord.add_function(name)
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


def known_in_cluster(registry: FunctionRegistry, own: Endpoint, timeout: float) -> set[str]:
    """Names recorded in ZooKeeper plus those every member's gearmand knows right now (queued
    jobs or registered workers): a worker for a function anywhere makes its name known."""
    members = registry.coord.members().values()
    endpoints = {Endpoint.parse(m.gearman) for m in members} | {own}
    return registry.known() | names_served(endpoints, timeout)
