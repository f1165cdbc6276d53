"""`gearctl store inspect` on any cluster: find the store, the function names and live prefix.

A node name is looked up in ZooKeeper (its store record, else the local plan); `host:port` is
read as it is. The cluster's function names (ZooKeeper and every live gearmand) split the job keys
right, and the store's epoch gives the prefix of the gearmand serving it now (`live` groups).
"""

from __future__ import annotations

from typing import Any

from cluster import target as targets
from cluster.clusterread import read_store
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.functions import names_served
from cluster.inspect_store import inspect_store
from cluster.jobkey import incarnation_prefix
from cluster.probe import PROBE_TIMEOUT
from cluster.target import Target


def inspect_in_cluster(target: Target | None, store: str) -> dict[str, Any]:
    """The summary of `store` (a node of `target`, or host:port; with no target: host:port)."""
    if target is None:
        return inspect_store(Endpoint.parse(store), set())
    plan = {n.name: n.store for n in target.local.nodes} if target.local else {}
    with targets.session(target) as session:
        nodes = set(session.stores()) | set(plan)
        view = read_store(session, store)
        members = session.members()
        known_functions = session.function_names()
        cluster = session.paths.cluster
    if store in nodes:
        address = view.record.address if view.record else plan[store]
    elif ":" in store:
        address = store
    else:
        raise GearctlError(f"no node {store!r} in cluster {cluster!r}; nodes: "
                           f"{', '.join(sorted(nodes)) or 'none'}")  # fmt: skip
    live = [Endpoint.parse(m.gearman) for m in members.values() if m.live]
    known_functions |= names_served(live, PROBE_TIMEOUT)
    prefix = incarnation_prefix(view.epoch) if store in nodes and view.epoch is not None else None
    return inspect_store(Endpoint.parse(address), known_functions, prefix)
