"""The protocol and admin clients against a real gearmand 1.1.20 (builtin queue) and fake peers."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from cluster.endpoint import Endpoint
from cluster.errors import GearmanConnectionError, GearmanServerError, ProtocolError
from cluster.gearman.admin import AdminClient, AdminCommandError, is_serving
from cluster.gearman.protocol import (
    BatchConnectionError,
    BatchSubmitError,
    GearmanConnection,
    JobFailedError,
    Magic,
    Packet,
    PacketType,
    decode,
    encode,
    request,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("gearmand") is None, reason="gearmand is not installed"),
]

HOST = "127.0.0.1"


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Gearmand:
    endpoint: Endpoint
    pid: int


@pytest.fixture(scope="module")
def gearmand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gearmand]:
    """A real gearmand with the builtin queue on a free loopback port, stopped by its pid."""
    workdir = tmp_path_factory.mktemp("gearmand")
    endpoint = Endpoint(HOST, free_loopback_port())
    command = [
        "gearmand", "-p", str(endpoint.port), "-L", HOST, "-t", "1",
        "-l", str(workdir / "gearmand.log"), "-P", str(workdir / "gearmand.pid"),
        "--verbose", "INFO",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not is_serving(endpoint, 0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (workdir / "gearmand.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"gearmand did not start serving on {endpoint}:\n{log}")
            time.sleep(0.02)
        yield Gearmand(endpoint, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def fresh(name: str) -> str:
    """A function name no other test uses, so per-function counts stay exact."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def queued(endpoint: Endpoint, function: str) -> int:
    return sum(f.queued for f in AdminClient(endpoint).status() if f.name == function)


@pytest.fixture
def silent_server() -> Iterator[Endpoint]:
    """A listening socket that never accepts: TCP connects succeed, nothing is ever answered
    (what a SIGSTOPped gearmand looks like)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen(16)
        yield Endpoint(HOST, sock.getsockname()[1])


def start_fake_server(answer: Callable[[socket.socket], None]) -> tuple[Endpoint, threading.Thread]:
    """A one-connection server on a thread that runs `answer` on the accepted socket."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(1)
    listener.settimeout(5)

    def serve() -> None:
        with listener, listener.accept()[0] as conn:
            conn.settimeout(5)
            answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return Endpoint(HOST, listener.getsockname()[1]), thread


def read_requests(conn: socket.socket, count: int) -> list[Packet]:
    buffer, packets = b"", []
    while len(packets) < count:
        decoded = decode(buffer)
        if decoded is None:
            buffer += conn.recv(65536)
            continue
        packets.append(decoded[0])
        buffer = buffer[decoded[1] :]
    return packets


# Client side.


def test_echo(gearmand: Gearmand) -> None:
    with GearmanConnection(gearmand.endpoint) as conn:
        assert conn.echo(b"hello\0world") == b"hello\0world"
        assert conn.echo(b"") == b""


def test_submit_background_is_queued(gearmand: Gearmand) -> None:
    function = fresh("bg")
    with GearmanConnection(gearmand.endpoint) as conn:
        handle = conn.submit_background(function, b"payload", unique="u1", priority="high")
    assert handle.startswith(b"H:")
    assert queued(gearmand.endpoint, function) == 1


def test_submit_background_many_three_priorities(gearmand: Gearmand) -> None:
    function = fresh("many")
    priorities = ("high", "normal", "low")
    jobs = [(function, f"job-{n}", b"x" * 64, priorities[n % 3]) for n in range(5000)]
    with GearmanConnection(gearmand.endpoint) as conn:
        handles = conn.submit_background_many(jobs, window=200)
        assert conn.echo(b"still in sync") == b"still in sync"
    assert len(handles) == len(set(handles)) == 5000
    assert queued(gearmand.endpoint, function) == 5000


def test_submit_background_many_without_pipelining(gearmand: Gearmand) -> None:
    function = fresh("window1")
    jobs = [(function, f"job-{n}", b"p", "low") for n in range(20)]
    with GearmanConnection(gearmand.endpoint) as conn:
        assert len(conn.submit_background_many(jobs, window=1)) == 20
        assert conn.submit_background_many([]) == []
    assert queued(gearmand.endpoint, function) == 20


def test_worker_gets_highest_priority_first(gearmand: Gearmand) -> None:
    function = fresh("prio")
    with GearmanConnection(gearmand.endpoint) as client:
        for n in (1, 2):
            for priority in ("low", "normal", "high"):
                client.submit_background(
                    function, f"{priority}{n}".encode(), unique=f"{priority}-{n}", priority=priority
                )
    with GearmanConnection(gearmand.endpoint) as worker:
        worker.can_do(function)
        grabbed = []
        while (job := worker.grab_job_uniq()) is not None:
            assert job.function == function
            grabbed.append(job.unique)
            worker.work_complete(job.handle, b"done")
    assert grabbed == ["high-1", "high-2", "normal-1", "normal-2", "low-1", "low-2"]
    assert queued(gearmand.endpoint, function) == 0


def run_worker(endpoint: Endpoint, function: str, handle_job: Callable) -> threading.Thread:
    """A worker thread that takes one job of `function` and passes it to `handle_job`."""

    def work() -> None:
        with GearmanConnection(endpoint) as worker:
            worker.can_do(function)
            deadline = time.monotonic() + 5
            while (job := worker.grab_job_uniq()) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if job is not None:
                handle_job(worker, job)
                worker.echo(b"sync")  # the server has read our answer

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_foreground_submit_completes(gearmand: Gearmand) -> None:
    function = fresh("fg")

    def complete(worker: GearmanConnection, job) -> None:
        worker.send(request(PacketType.WORK_STATUS, job.handle, b"1", b"2"))
        worker.send(request(PacketType.WORK_DATA, job.handle, b"partial"))
        worker.work_complete(job.handle, b"result:" + job.payload)

    thread = run_worker(gearmand.endpoint, function, complete)
    with GearmanConnection(gearmand.endpoint) as client:
        assert client.submit(function, b"in\0put", unique="fg1") == b"result:in\0put"
    thread.join(5)


def test_foreground_submit_fails(gearmand: Gearmand) -> None:
    function = fresh("fgfail")
    thread = run_worker(gearmand.endpoint, function, lambda w, job: w.work_fail(job.handle))
    with GearmanConnection(gearmand.endpoint) as client, pytest.raises(JobFailedError):
        client.submit(function, b"x", priority="low")
    thread.join(5)


def test_gearman_cli_background_job_reaches_our_worker(gearmand: Gearmand) -> None:
    function = fresh("cli")
    port = str(gearmand.endpoint.port)
    subprocess.run(
        ["gearman", "-h", HOST, "-p", port, "-b", "-f", function, "-u", "u1", "data"],
        check=True,
        timeout=10,
        capture_output=True,
    )
    with GearmanConnection(gearmand.endpoint) as worker:
        worker.can_do(function)
        job = worker.grab_job_uniq()
        assert job is not None
        assert (job.function, job.unique, job.payload) == (function, "u1", b"data")
        worker.work_complete(job.handle)
        assert worker.grab_job_uniq() is None


def test_gearman_cli_worker_runs_our_foreground_job(gearmand: Gearmand) -> None:
    function = fresh("cliw")
    port = str(gearmand.endpoint.port)
    worker = subprocess.Popen(
        [
            "gearman",
            "-h",
            HOST,
            "-p",
            port,
            "-w",
            "-c",
            "1",
            "-f",
            function,
            "--",
            "tr",
            "a-z",
            "A-Z",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with GearmanConnection(gearmand.endpoint) as client:
            assert client.submit(function, b"hello") == b"HELLO"
    finally:
        if worker.poll() is None:
            worker.terminate()
        worker.wait(5)


def test_closed_port_raises_quickly() -> None:
    endpoint = Endpoint(HOST, free_loopback_port())
    started = time.monotonic()
    with pytest.raises(GearmanConnectionError, match=re.escape(str(endpoint))):
        GearmanConnection(endpoint).echo(b"x")
    with pytest.raises(GearmanConnectionError, match=re.escape(str(endpoint))):
        AdminClient(endpoint).status()
    assert not is_serving(endpoint, 0.5)
    assert time.monotonic() - started < 1


def test_silent_server_times_out(silent_server: Endpoint) -> None:
    started = time.monotonic()
    with GearmanConnection(silent_server, read_timeout=0.5) as conn:
        conn.send(request(PacketType.ECHO_REQ, b"x"))
        with pytest.raises(GearmanConnectionError, match=r"within 0\.5s"):
            conn.receive()
    assert 0.4 < time.monotonic() - started < 2


def test_admin_against_silent_server_times_out(silent_server: Endpoint) -> None:
    started = time.monotonic()
    with pytest.raises(GearmanConnectionError, match="did not answer"):
        AdminClient(silent_server, timeout=0.5).status()
    assert not is_serving(silent_server, 0.3)
    assert time.monotonic() - started < 2


def test_server_closing_mid_packet_raises() -> None:
    def half_packet(conn: socket.socket) -> None:
        read_requests(conn, 1)
        conn.sendall(encode(Packet(Magic.RES, PacketType.ECHO_RES, (b"abcdef",)))[:15])

    endpoint, thread = start_fake_server(half_packet)
    with GearmanConnection(endpoint) as conn, pytest.raises(GearmanConnectionError, match="closed"):
        conn.echo(b"abcdef")
    thread.join(5)


def test_batch_refusals_map_to_their_jobs_and_the_connection_goes_on() -> None:
    """A server that refuses the 1st and 4th of 6 pipelined submits and acknowledges the others
    (as gearmand 1.1.20 does when its store is full for large items only): every answer is
    mapped to its job, and the connection stays in step for the next request."""

    def refuse_two(conn: socket.socket) -> None:
        packets = read_requests(conn, 6)
        assert [p.type for p in packets[:3]] == [
            PacketType.SUBMIT_JOB_HIGH_BG,
            PacketType.SUBMIT_JOB_BG,
            PacketType.SUBMIT_JOB_LOW_BG,
        ]
        refused = Packet(Magic.RES, PacketType.ERROR, (b"QUEUE_ERROR", b"store full"))
        created = [Packet(Magic.RES, PacketType.JOB_CREATED, (b"H:x:%d" % n,)) for n in range(6)]
        conn.sendall(b"".join(map(encode, [refused, *created[1:3], refused, *created[4:]])))
        read_requests(conn, 1)
        conn.sendall(encode(Packet(Magic.RES, PacketType.ECHO_RES, (b"still here",))))

    endpoint, thread = start_fake_server(refuse_two)
    jobs = [("f", f"u{n}", b"p", ("high", "normal", "low")[n % 3]) for n in range(6)]
    with GearmanConnection(endpoint) as conn:
        with pytest.raises(BatchSubmitError) as info:
            conn.submit_background_many(jobs, window=10)
        assert conn.echo(b"still here") == b"still here"
    error = info.value
    assert (error.code, error.acknowledged, error.refused) == ("QUEUE_ERROR", 4, [0, 3])
    assert info.value.handles == [None, b"H:x:1", b"H:x:2", None, b"H:x:4", b"H:x:5"]
    thread.join(5)


def test_batch_connection_loss_reports_exactly_the_acknowledged() -> None:
    """The server answers 4 of 6 pipelined submits, then closes the connection."""

    def answer_four(conn: socket.socket) -> None:
        read_requests(conn, 6)
        answers = [Packet(Magic.RES, PacketType.JOB_CREATED, (b"H:x:%d" % n,)) for n in range(4)]
        conn.sendall(b"".join(map(encode, answers)))

    endpoint, thread = start_fake_server(answer_four)
    jobs = [("f", f"u{n}", b"p", "normal") for n in range(6)]
    with GearmanConnection(endpoint) as conn, pytest.raises(BatchConnectionError) as info:
        conn.submit_background_many(jobs, window=10)
    assert info.value.handles == [b"H:x:%d" % n for n in range(4)]
    assert "closed the connection (4 jobs of the batch acknowledged" in str(info.value)
    thread.join(5)


def test_batch_send_failure_keeps_the_answers_that_arrived() -> None:
    """The server answers the first 10 submits and closes with requests unread (a reset)
    while the client still sends: the 10 answers count, however the failure shows."""

    def answer_ten_and_reset(conn: socket.socket) -> None:
        read_requests(conn, 10)
        answers = [Packet(Magic.RES, PacketType.JOB_CREATED, (b"H:x:%d" % n,)) for n in range(10)]
        conn.sendall(b"".join(map(encode, answers)))
        time.sleep(0.2)  # the answers arrive before the reset

    endpoint, thread = start_fake_server(answer_ten_and_reset)
    jobs = [("f", f"u{n}", b"p" * 1000, "normal") for n in range(20_000)]
    with GearmanConnection(endpoint) as conn, pytest.raises(BatchConnectionError) as info:
        conn.submit_background_many(jobs, window=20_000)
    assert info.value.handles == [b"H:x:%d" % n for n in range(10)]
    thread.join(5)


def test_error_packet_raises_server_error() -> None:
    def refuse(conn: socket.socket) -> None:
        read_requests(conn, 1)
        conn.sendall(encode(Packet(Magic.RES, PacketType.ERROR, (b"QUEUE_ERROR", b"full"))))

    endpoint, thread = start_fake_server(refuse)
    with (
        GearmanConnection(endpoint) as conn,
        pytest.raises(GearmanServerError, match="QUEUE_ERROR"),
    ):
        conn.submit_background("f", b"x")
    thread.join(5)


# Admin side.


def test_admin_commands(gearmand: Gearmand) -> None:
    admin = AdminClient(gearmand.endpoint)
    assert admin.version().startswith("1.1.")
    assert admin.getpid() == gearmand.pid
    function = fresh("adm")
    with GearmanConnection(gearmand.endpoint) as worker:
        worker.can_do(function)
        worker.echo(b"sync")
        mine = [w for w in admin.workers() if function in w.functions]
        assert len(mine) == 1
        assert mine[0].address == HOST
        assert any(f.name == function and f.workers == 1 for f in admin.status())


def test_admin_shutdown_is_unsupported_by_debian_gearmand(gearmand: Gearmand) -> None:
    """Measured: Debian's gearmand 1.1.20 answers `shutdown` with ERR UNKNOWN_COMMAND."""
    admin = AdminClient(gearmand.endpoint)
    for graceful in (False, True):
        with pytest.raises(AdminCommandError) as info:
            admin.shutdown(graceful=graceful)
        assert info.value.code == "UNKNOWN_COMMAND"
    assert is_serving(gearmand.endpoint)


def test_admin_garbage_reply_is_protocol_error() -> None:
    endpoint, thread = start_fake_server(lambda conn: conn.sendall(b"this is not a status\n"))
    with pytest.raises(ProtocolError, match="status line"):
        AdminClient(endpoint, timeout=5).status()
    thread.join(5)


def test_admin_keep_open_answers_every_call_on_one_connection() -> None:
    """The health check's kept-open connection: two calls, one accepted connection; once the
    server closes it, the next call fails and the one after connects anew."""

    def answer_twice(conn: socket.socket) -> None:
        for _ in range(2):
            assert conn.recv(100) == b"version\n"
            conn.sendall(b"OK 1.1.20\n")

    endpoint, thread = start_fake_server(answer_twice)  # accepts one connection only
    admin = AdminClient(endpoint, timeout=5, keep_open=True)
    assert [admin.version(), admin.version()] == ["1.1.20", "1.1.20"]
    thread.join(5)
    with pytest.raises(GearmanConnectionError, match="closed the connection"):
        admin.version()
    with pytest.raises(GearmanConnectionError, match="cannot connect"):
        admin.version()  # a fresh connect: the fake server's listener is gone
    admin.close()


def test_admin_keep_open_against_gearmand(gearmand: Gearmand) -> None:
    admin = AdminClient(gearmand.endpoint, keep_open=True)
    try:
        assert admin.getpid() == gearmand.pid
        assert isinstance(admin.status(), list)
        assert admin.getpid() == gearmand.pid
    finally:
        admin.close()
