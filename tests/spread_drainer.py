"""A spread drain's part drainer in a process of its own, that the integration test kills
mid-part (tests/test_spread_takeover.py): node3 waits for node2's plan, then drains its parts
into gearmand TARGET, slowly (DELAY seconds before each chunk but the first), so the test can
SIGKILL it between chunks with deletes in flight.

    python -m tests.spread_drainer ZOOKEEPER CLUSTER TARGET DELAY
"""

from __future__ import annotations

import sys
import time

from cluster import coord, spreaddrain
from cluster.drill.workload import FUNCTIONS
from cluster.endpoint import Endpoint
from cluster.process import wait_until


def main(zookeeper: str, cluster: str, target: str, delay: float) -> None:
    session = coord.connect(zookeeper, cluster, timeout=5.0, session_timeout=2.0)

    def counted_plan() -> bool:
        plan = session.spread_plan("node2")
        return plan is not None and plan.counted

    wait_until(counted_plan, timeout=120, what="node2's counted spread plan", interval=0.01)
    plan = session.spread_plan("node2")
    assert plan is not None
    asked: list[bool] = []

    def slowly() -> bool:
        asked.append(True)
        if len(asked) > 2:  # drain_parts' first look and the first chunk go at once
            time.sleep(delay)
        return True

    spreaddrain.drain_parts(session, "node2", plan, Endpoint.parse(target), by="node3",
                            known=set(FUNCTIONS), keep_going=slowly)  # fmt: skip
    session.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
