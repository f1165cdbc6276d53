"""Failover drill against the rolled-out cluster (run by tests/rollout/run.sh, as root).

Registers one idle worker per node for the drill's functions (as production workers would be:
their function names let a restore split job keys with dashes in them), submits numbered
background jobs through one node's gearmand, kills that whole node with SIGKILL (its agent,
then its gearmand, by the PIDs its member record names), waits until every node
serves again and every acknowledged job is queued on a live gearmand (restored by the node's
restarted agent or drained by a peer), lets one worker per node drain everything and counts each
job: exit 1 if any was lost, duplicated or unexpected. Prints the ledger.

    failover.py --zookeeper H:P,... --cluster NAME --node node1 --jobs 2000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable

import psutil

from cluster import coord
from cluster.coord import MemberRecord
from cluster.drill.workload import FUNCTIONS, Ledger, drain, numbered_jobs, submit
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.gearman.admin import AdminClient
from cluster.gearman.protocol import GearmanConnection

RECOVERY_TIMEOUT = 120.0


def say(text: str) -> None:
    print(f"[failover] {text}", file=sys.stderr, flush=True)


def queued(endpoint: Endpoint) -> int:
    try:
        return sum(f.queued for f in AdminClient(endpoint).status() if f.name in FUNCTIONS)
    except GearctlError:
        return 0


def kill(pid: int | None, what: str) -> None:
    """SIGKILL `pid` and wait until it is gone (delivery is asynchronous)."""
    if not pid:
        return
    try:
        process = psutil.Process(pid)
        process.kill()
        process.wait(timeout=10)
    except psutil.NoSuchProcess:
        pass
    say(f"SIGKILL {what} pid {pid}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zookeeper", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--node", default="node1")
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    # reading member records needs no credentials
    with coord.session(args.zookeeper, args.cluster, timeout=10, session_timeout=4.0) as session:
        return drill(args, session.members)


def drill(args: argparse.Namespace, members: Callable[[], dict[str, MemberRecord]]) -> int:
    before: dict[str, MemberRecord] = members()
    victim = before[args.node]
    with contextlib.ExitStack() as workers:
        for member in before.values():
            worker = workers.enter_context(GearmanConnection(Endpoint.parse(member.gearman)))
            for function in FUNCTIONS:
                worker.can_do(function)
        return inject_and_count(args, members, before, victim)


def inject_and_count(
    args: argparse.Namespace,
    members: Callable[[], dict[str, MemberRecord]],
    before: dict[str, MemberRecord],
    victim: MemberRecord,
) -> int:
    workload = numbered_jobs(args.jobs, prefix="rollout-failover")
    acknowledged = submit(Endpoint.parse(victim.gearman), workload)
    say(f"{acknowledged} of {args.jobs} jobs acknowledged by {args.node} ({victim.gearman})")
    fault_at = time.monotonic()
    kill(victim.agent_pid, f"{args.node} agent")
    kill(victim.gearmand_pid, f"{args.node} gearmand")

    deadline = fault_at + RECOVERY_TIMEOUT
    while True:
        now = members()
        back = now.get(args.node)
        serving = [m for m in now.values() if m.state == "serving"]
        total = sum(queued(Endpoint.parse(m.gearman)) for m in serving)
        if (
            back is not None
            and back.agent_pid != victim.agent_pid
            and len(serving) == len(before)
            and total >= acknowledged
        ):
            break
        if time.monotonic() > deadline:
            say(f"no recovery after {RECOVERY_TIMEOUT}s: {len(serving)} serving, {total} queued")
            return 1
        time.sleep(0.2)
    say(
        f"recovered after {time.monotonic() - fault_at:.1f}s: {args.node} serving again "
        f"(agent pid {back.agent_pid}), {total} jobs queued on live gearmands"
    )
    drained = drain([Endpoint.parse(m.gearman) for m in now.values()], FUNCTIONS, acknowledged)
    uniques = {job.unique for job in workload[:acknowledged]}
    ledger = Ledger.count(args.jobs, uniques, drained)
    servers = sorted({server for _, _, server in drained.order})
    say(f"drained from {', '.join(servers)}")
    print(f"ledger: {ledger}", flush=True)
    ok = ledger.lost == 0 and ledger.duplicated == 0 and ledger.unexpected == 0
    ok = ok and ledger.acknowledged == args.jobs
    return 0 if ok else 1


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("failover.py kills the node's processes: run it as root")
    sys.exit(main())
