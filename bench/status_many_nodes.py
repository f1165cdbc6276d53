"""`gearctl cluster status` of a 30-node cluster whose hosts do not answer (issue 15).

A real 3-node local cluster, plus 27 nodes described in its ZooKeeper (store records, as agents
write them) whose gearmand and memcached addresses are loopback listeners that accept
connections and never answer (hosts that hang: the worst case, every probe waits its whole
timeout). `cluster.clusterstatus.collect` (what `cluster status --zookeeper` runs, without the
interpreter's start) is timed 5 times; automatic take-over is paused, so the survivors leave
the fake nodes alone. Probes one after another would take 27 x 2 x 1 s = 54 s.

Goal: about one probe timeout (1 s) plus ZooKeeper reads: under 2 s.

    .venv/bin/python bench/status_many_nodes.py [--quick]
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time

from common import Services, median, save, table

from cluster import target as targets
from cluster.clusterstatus import collect
from cluster.coord import PauseRecord, StoreRecord
from cluster.endpoint import Endpoint
from cluster.probe import PROBE_TIMEOUT
from cluster.target import Target

HUNG_NODES = 27
GOAL = 2.0


class SilentHosts:
    """Loopback listeners that accept and never answer, each standing for a host that hangs."""

    def __init__(self, count: int) -> None:
        self.listeners = []
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(64)
            sock.settimeout(0.05)
            self.listeners.append(sock)
        self.held: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)
        self.thread.start()

    @property
    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("127.0.0.1", s.getsockname()[1]) for s in self.listeners]

    def _hold(self) -> None:
        while not self.stopping.is_set():
            for sock in self.listeners:
                try:
                    self.held.append(sock.accept()[0])
                except OSError:
                    continue

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()
        for sock in self.listeners + self.held:
            sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs instead of 5")
    args = parser.parse_args()
    runs = 2 if args.quick else 5
    hosts = SilentHosts(HUNG_NODES * 2)
    try:
        with Services("status-many") as services:
            cluster = services.cluster(3)
            target = Target(cluster.zookeeper, cluster.cluster, source="bench")
            silent = hosts.endpoints
            with targets.session(target) as session:
                session.pause_takeover(PauseRecord())  # survivors leave the fake nodes alone
                for i in range(HUNG_NODES):
                    gearman, store = silent[2 * i], silent[2 * i + 1]
                    record = StoreRecord(str(store), str(gearman), f"hung{i}", None)
                    session.describe_store(f"hung{i:02d}", record)
            seconds = []
            for _ in range(runs):
                started = time.monotonic()
                status = collect(target)
                seconds.append(time.monotonic() - started)
                nodes = status["nodes"]
                assert len(nodes) == 3 + HUNG_NODES, len(nodes)
                assert sum(not n["gearmand_up"] for n in nodes) == HUNG_NODES
    finally:
        hosts.close()
    rows = [[i + 1, 3 + HUNG_NODES, HUNG_NODES, f"{s:.2f}"] for i, s in enumerate(seconds)]
    print(table(["run", "nodes", "hung", "seconds"], rows))
    print(f"median {median(seconds):.2f} s (probe timeout {PROBE_TIMEOUT} s; goal < {GOAL} s)")
    result = {"quick": args.quick, "nodes": 3 + HUNG_NODES, "hung": HUNG_NODES,
              "probe_timeout": PROBE_TIMEOUT, "seconds": seconds, "median": median(seconds),
              "goal": GOAL}  # fmt: skip
    save("status_many_nodes", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
