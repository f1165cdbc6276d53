"""Worker and Client features against one real gearmand (the `gearmand` fixture): concurrency,
progress, exceptions, job status, retries, timeouts, draining; and a Client shared by threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from cluster.gearman.admin import AdminClient
from cluster.gearman.client import (
    Client,
    JobExceptionError,
    JobUpdate,
    Retry,
    Worker,
    WorkerJob,
)
from cluster.gearman.worker import next_unique, split_attempt
from cluster.process import wait_until
from tests.conftest import RunningGearmand

pytestmark = pytest.mark.integration


def wait_for(check: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Wait for a state to be reached (a bound against hangs, not a speed assertion)."""
    wait_until(lambda: bool(check()), timeout=timeout, what=what, interval=0.02)


@contextmanager
def working(worker: Worker) -> Iterator[Worker]:
    thread = threading.Thread(target=worker.work, kwargs={"handle_signals": False})
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(30)
        assert not thread.is_alive()
        worker.close()


def counts(gearmand: RunningGearmand, function: str) -> tuple[int, int]:
    """(jobs queued in all, of which running) for `function` as gearmand reports them."""
    for status in AdminClient(gearmand.endpoint).status():
        if status.name == function:
            return status.queued, status.running
    return 0, 0


def test_concurrency_grabs_only_for_free_slots(gearmand: RunningGearmand) -> None:
    release = threading.Event()
    started: list[str] = []

    def hold(job: WorkerJob) -> bytes:
        started.append(job.unique)
        release.wait(30)
        return b"ok"

    worker = Worker(servers=[gearmand.endpoint], concurrency=3)
    worker.register("hold", hold)
    with Client(servers=[gearmand.endpoint]) as client:
        for i in range(7):
            client.submit_background("hold", f"{i}", unique=f"u{i}")
        with working(worker):
            wait_for(lambda: len(started) == 3, "three jobs running")
            time.sleep(0.3)  # time for a wrong extra grab to show up
            assert counts(gearmand, "hold") == (7, 3)
            assert len(started) == 3
            release.set()
            wait_for(lambda: counts(gearmand, "hold") == (0, 0), "all jobs done")
    assert sorted(started) == [f"u{i}" for i in range(7)]


def test_foreground_progress_reaches_callback_and_stream(gearmand: RunningGearmand) -> None:
    def chatty(job: WorkerJob) -> bytes:
        job.send_data(b"part-1")
        job.send_warning("careful")
        job.send_status(1, 2)
        job.send_data(b"part-2")
        return job.payload.upper()

    worker = Worker(servers=[gearmand.endpoint], concurrency=2)
    worker.register("chatty", chatty)
    with working(worker), Client(servers=[gearmand.endpoint]) as client:
        seen: list[JobUpdate] = []
        assert client.submit("chatty", b"abc", on_update=seen.append) == b"ABC"
        streamed = list(client.stream("chatty", b"xyz"))
    expected = [("data", b"part-1"), ("warning", b"careful"), ("status", b""), ("data", b"part-2")]
    assert [(u.kind, u.data) for u in seen] == expected
    assert (seen[2].numerator, seen[2].denominator) == (1, 2)
    assert [(u.kind, u.data) for u in streamed] == [*expected, ("complete", b"XYZ")]


def test_foreground_handler_error_raises_with_its_text(gearmand: RunningGearmand) -> None:
    def broken(job: WorkerJob) -> bytes:
        raise RuntimeError(f"cannot handle {job.payload.decode()}")

    worker = Worker(servers=[gearmand.endpoint])
    worker.register("broken", broken, retry=Retry(attempts=3, backoff=0))
    with working(worker), Client(servers=[gearmand.endpoint]) as client:
        with pytest.raises(JobExceptionError) as raised:
            client.submit("broken", b"this", timeout=20)
        assert raised.value.text == "RuntimeError: cannot handle this"
        with pytest.raises(JobExceptionError, match="cannot handle that"):
            client.submit("broken", b"that", timeout=20)  # the Worker goes on
    # A foreground job is not retried: nothing was resubmitted for it.
    assert counts(gearmand, "broken")[0] == 0


def test_status_of_a_background_job_by_handle_and_by_unique(gearmand: RunningGearmand) -> None:
    release = threading.Event()

    def progress(job: WorkerJob) -> None:
        job.send_status(1, 3)
        release.wait(30)

    worker = Worker(servers=[gearmand.endpoint])
    worker.register("progress", progress)
    with Client(servers=[gearmand.endpoint]) as client:
        handle = client.submit_background("progress", b"", unique="job-7")
        queued = client.status(handle)
        assert (queued.known, queued.running, queued.server) == (True, False, gearmand.endpoint)
        with working(worker):
            wait_for(lambda: client.status(handle).numerator == 1, "status 1/3 reported")
            by_handle = client.status(handle)
            by_unique = client.status(unique="job-7")
            assert (by_handle.running, by_handle.numerator, by_handle.denominator) == (True, 1, 3)
            assert (by_unique.known, by_unique.running, by_unique.waiting) == (True, True, 0)
            assert by_unique.numerator == 1 and by_unique.denominator == 3
            release.set()
            wait_for(lambda: not client.status(handle).known, "job done")
        assert not client.status(unique="job-7").known
        with pytest.raises(ValueError):
            client.status()


def test_failed_background_job_is_retried_with_its_attempt_then_dead_lettered(
    gearmand: RunningGearmand,
) -> None:
    runs: list[tuple[str, int]] = []
    dead: list[tuple[str, str]] = []
    lock = threading.Lock()

    def flaky(job: WorkerJob) -> bytes:
        with lock:
            runs.append((job.payload.decode(), job.attempt))
        if job.payload == b"always" or job.attempt < 3:
            raise ValueError(f"attempt {job.attempt}")
        return b"ok"

    retry = Retry(
        attempts=3, backoff=0.05, dead_letter=lambda job, error: dead.append((job.unique, error))
    )
    worker = Worker(servers=[gearmand.endpoint], concurrency=2)
    worker.register("flaky", flaky, retry=retry)
    with working(worker), Client(servers=[gearmand.endpoint]) as client:
        client.submit_background("flaky", b"recovers", unique="r-1")
        client.submit_background("flaky", b"always", unique="a-1")
        wait_for(lambda: len(dead) == 1 and len(runs) == 6, "retries and the dead letter")
        wait_for(lambda: counts(gearmand, "flaky") == (0, 0), "nothing left queued")
    assert sorted(runs) == sorted(
        [
            ("recovers", 1),
            ("recovers", 2),
            ("recovers", 3),
            ("always", 1),
            ("always", 2),
            ("always", 3),
        ]
    )
    assert dead == [("a-1/attempt-3", "ValueError: attempt 3")]


def test_dead_letter_function_gets_the_job_and_its_error(gearmand: RunningGearmand) -> None:
    def fails(job: WorkerJob) -> None:
        raise KeyError("no such image")

    worker = Worker(servers=[gearmand.endpoint])
    worker.register("fails", fails, retry=Retry(attempts=1, dead_letter="failed-jobs"))
    with working(worker), Client(servers=[gearmand.endpoint]) as client:
        client.submit_background("fails", b"\x00img", unique="img-9")
        wait_for(lambda: counts(gearmand, "failed-jobs")[0] == 1, "dead letter queued")
        assert client.status(unique="img-9/dead").known
    letters: list[bytes] = []
    reader = Worker(servers=[gearmand.endpoint])
    reader.register("failed-jobs", lambda job: letters.append(job.payload))
    with working(reader):
        wait_for(lambda: letters, "dead letter read")
    import base64
    import json

    letter = json.loads(letters[0])
    assert letter["function"] == "fails" and letter["unique"] == "img-9"
    assert letter["attempts"] == 1 and letter["error"] == "KeyError: 'no such image'"
    assert base64.b64decode(letter["payload"]) == b"\x00img"


def test_a_hanging_handler_times_out_and_frees_its_slot(gearmand: RunningGearmand) -> None:
    never = threading.Event()

    def maybe_hang(job: WorkerJob) -> bytes:
        if job.payload == b"hang":
            never.wait(60)
        return b"done"

    worker = Worker(servers=[gearmand.endpoint], concurrency=1)
    worker.register("maybe", maybe_hang, timeout=0.5)
    try:
        with working(worker), Client(servers=[gearmand.endpoint]) as client:
            with pytest.raises(JobExceptionError, match="timed out"):
                client.submit("maybe", b"hang", timeout=30)
            assert client.submit("maybe", b"fine", timeout=30) == b"done"  # one slot: freed
    finally:
        never.set()


def test_stop_drains_and_fails_back_what_did_not_finish(gearmand: RunningGearmand) -> None:
    """In grace: a job finishes. After it: a job with a Retry is resubmitted as its next
    attempt; one without is answered WORK_FAIL and gearmand deletes it."""
    finish, never = threading.Event(), threading.Event()
    started: list[str] = []

    def slow(job: WorkerJob) -> bytes:
        started.append(job.unique)
        (finish if job.payload == b"finishes" else never).wait(60)
        return b"ok"

    worker = Worker(servers=[gearmand.endpoint], concurrency=3)
    worker.register("slow", slow)
    worker.register("kept", slow, retry=Retry(attempts=3))
    thread = threading.Thread(target=worker.work, kwargs={"handle_signals": False})
    with Client(servers=[gearmand.endpoint]) as client:
        client.submit_background("slow", b"finishes", unique="f-1")
        client.submit_background("slow", b"stuck", unique="s-1")
        client.submit_background("kept", b"stuck", unique="k-1")
        thread.start()
        try:
            wait_for(lambda: len(started) == 3, "three jobs running")
            worker.stop(grace=1.0)
            finish.set()
            thread.join(30)
            assert not thread.is_alive()
            assert worker.jobs_done == 3  # answered: f-1 done, s-1 failed, k-1 handed on
            assert not client.status(unique="f-1").known
            assert not client.status(unique="s-1").known  # WORK_FAIL: gearmand dropped it
            assert not client.status(unique="k-1").known
            again = client.status(unique="k-1/attempt-2")
            assert again.known and not again.running
        finally:
            never.set()
            worker.close()


def test_attempt_uniques() -> None:
    assert split_attempt("abc") == ("abc", 1)
    assert split_attempt(next_unique("abc", 4)) == ("abc", 4)
    assert split_attempt("a/attempt-x") == ("a/attempt-x", 1)
    long = "u" * 60
    shortened = next_unique(long, 2)
    assert len(shortened) <= 63 and split_attempt(shortened)[1] == 2
    assert next_unique(long, 2) == shortened  # the same base every time
    with pytest.raises(ValueError):
        Retry(attempts=0)
    with pytest.raises(ValueError):
        Worker(servers=["127.0.0.1:1"], concurrency=0)


def test_one_client_shared_by_threads(gearmand: RunningGearmand) -> None:
    threads, each = 8, 150
    handles: list[bytes] = []
    lock = threading.Lock()
    with Client(servers=[gearmand.endpoint]) as client:

        def submit(n: int) -> None:
            mine = [client.submit_background("shared", f"{n}-{i}") for i in range(each)]
            with lock:
                handles.extend(mine)

        workers = [threading.Thread(target=submit, args=(n,)) for n in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(60)
        pooled = sum(len(conns) for conns in client._idle.values())
    assert len(set(handles)) == threads * each
    assert counts(gearmand, "shared") == (threads * each, 0)
    assert 1 <= pooled <= threads


SIGTERM_WORKER = """
import sys, time
from cluster.gearman.client import Worker
worker = Worker(servers=[sys.argv[1]], grace=30)
def slow(job):
    print("started", flush=True)
    time.sleep(1.0)
    return b"done"
worker.register("slow-term", slow)
print("ran", worker.work(), flush=True)
"""


def test_sigterm_drains_the_job_in_hand(gearmand: RunningGearmand) -> None:
    import subprocess
    import sys

    with Client(servers=[gearmand.endpoint]) as client:
        client.submit_background("slow-term", b"", unique="t-1")
        client.submit_background("slow-term", b"", unique="t-2")
        proc = subprocess.Popen(
            [sys.executable, "-c", SIGTERM_WORKER, str(gearmand.endpoint)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        proc.terminate()  # SIGTERM while the first job runs
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert out.strip() == "ran 1"  # it finished the job in hand and grabbed no other
        assert counts(gearmand, "slow-term") == (1, 0)  # the second still waits, not running
