"""What each node of a local cluster runs, pinned to a core of its own, and the CPU it used.

Network namespaces (`--hosts netns`) separate the network, not the CPUs: every "host" runs on
every core. `pin` gives each survivor (every node but the victim) one core for its agent, its
gearmand and its stores, as a host of its own would have; the victim's stores (what a take-over
drains) and ZooKeeper stay unpinned. `cpu_seconds` is each process's user + system CPU time, so a
drain's CPU use per process shows what the shared cores limit.
"""

from __future__ import annotations

import os

import psutil

from cluster.local.cluster import LocalCluster


def node_processes(cluster: LocalCluster, node: str) -> dict[str, psutil.Process]:
    """Node's running processes by role: `agent` (its supervisor's child), `gearmand` (the
    agent's child), and its stores (`store`, `twin`)."""
    found: dict[str, psutil.Process] = {}
    agent = cluster.agent_pid(node)
    if agent is not None:
        found["agent"] = psutil.Process(agent)
        for child in found["agent"].children(recursive=True):
            found.setdefault(child.name(), child)  # gearmand
    for kind in ("store", "twin"):
        ref = cluster.processes.get(f"{kind}:{node}")
        if ref is not None and ref.alive():
            found[kind] = psutil.Process(ref.pid)
    return found


def pin(cluster: LocalCluster, victim: str) -> dict[str, int]:
    """Pin every survivor's processes (its supervisor's whole tree and its stores) to a core of
    its own, round the cores this process may use; the core of each survivor."""
    cores = sorted(os.sched_getaffinity(0))
    pinned: dict[str, int] = {}
    survivors = [n.name for n in cluster.nodes if n.name != victim]
    for rank, node in enumerate(survivors):
        core = cores[rank % len(cores)]
        supervisor = cluster.processes[f"agent:{node}"].pid
        root = psutil.Process(supervisor)
        tree = [root, *root.children(recursive=True), *node_processes(cluster, node).values()]
        for proc in {p.pid: p for p in tree}.values():  # agent and gearmand are in both
            proc.cpu_affinity([core])
        pinned[node] = core
    return pinned


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    """User + system CPU seconds of each process so far (left out once it is gone)."""
    seconds = {}
    for role, proc in procs.items():
        try:
            times = proc.cpu_times()
            seconds[role] = times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return seconds
