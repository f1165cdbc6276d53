"""Can gearmand write to its store again? One background job queued, run and completed.

What gearmand 1.1.20 does when its memcached store dies (measured, see docs/drills.md):
it keeps running and keeps its queued jobs in memory, but answers every new background submit
with `ERROR QUEUE_ERROR`, and when a worker sends WORK_COMPLETE it cannot delete the job's key,
closes the worker's connection and queues the job again. Once memcached answers again,
libmemcached retries the server only after its retry timeout (1-2 s measured), so a store that
answers `version` is not yet one gearmand writes to. This probe checks both writes gearmand does:
it queues a job of a function only the probe serves (`add` to the store), takes it as a worker
and completes it (`delete` from the store), then sends an ECHO on that same connection, which
gearmand would have closed had the delete failed.
"""

from __future__ import annotations

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.gearman.protocol import GearmanConnection

PROBE_FUNCTION = "gearctl-store-probe"


def store_writable(gearman: Endpoint, node: str, timeout: float) -> bool:
    """True if gearmand at `gearman` persists and removes a background job in its store."""
    with GearmanConnection(gearman, connect_timeout=timeout, read_timeout=timeout) as conn:
        try:
            conn.submit_background(PROBE_FUNCTION, b"", unique=node)  # coalesces with a leftover
            conn.can_do(PROBE_FUNCTION)
            job = conn.grab_job_uniq()
            if job is None:
                return False
            conn.work_complete(job.handle)
            return conn.echo(b"probe") == b"probe"
        except GearctlError:
            return False
