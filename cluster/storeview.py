"""`gearctl store inspect` on any cluster: find the store, the function names and live prefix.

A node name is looked up in ZooKeeper (its store record, else the local plan); `host:port` is
read as it is. A node with twin stores has both read: the one its gearmand writes is the summary,
the other is the summary's `twin` (None for one store). The cluster's function names (ZooKeeper
and every live gearmand) split the job keys right, and the store's epoch gives the prefix of the
gearmand serving it now (`live` groups).
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
    """The summary of `store` (a node of `target`, or host:port; with no target: host:port),
    with its twin store's summary under `twin`."""
    if target is None:
        return {**inspect_store(Endpoint.parse(store), set()), "twin": None}
    plan = {n.name: n.store for n in target.local.nodes} if target.local else {}
    with targets.session(target) as session:
        nodes = set(session.stores()) | set(plan)
        view = read_store(session, store)
        members = session.members()
        known_functions = session.function_names()
        cluster = session.paths.cluster
    if store in nodes:
        addresses = view.record.addresses if view.record else (plan[store],)
    elif ":" in store:
        addresses = (store,)
    else:
        raise GearctlError(f"no node {store!r} in cluster {cluster!r}; nodes: "
                           f"{', '.join(sorted(nodes)) or 'none'}")  # fmt: skip
    live = [Endpoint.parse(m.gearman) for m in members.values() if m.live]
    known_functions |= names_served(live, PROBE_TIMEOUT)
    prefix = incarnation_prefix(view.epoch) if store in nodes and view.epoch is not None else None
    first, *twin = (inspect_store(Endpoint.parse(a), known_functions, prefix) for a in addresses)
    return {**first, "twin": twin[0] if twin else None}
