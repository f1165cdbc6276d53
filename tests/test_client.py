"""Unit tests of Client failover, Worker and discovery, with fake servers on loopback sockets."""

from __future__ import annotations

import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from cluster.coord import MemberRecord
from cluster.endpoint import Endpoint
from cluster.errors import ConfigError
from cluster.gearman.client import (
    BackgroundJob,
    Client,
    JobFailedError,
    NoServerError,
    Worker,
    new_uniques,
)
from cluster.gearman.discovery import StaticServers, ZooKeeperServers, parse_servers
from cluster.gearman.protocol import Packet, PacketType, decode, encode
from cluster.servers_cmd import live_servers


def answer(type_: PacketType, *args: bytes) -> bytes:
    from cluster.gearman.protocol import Magic

    return encode(Packet(Magic.RES, type_, args))


class FakeGearmand:
    """A loopback server that answers each request packet with `respond(packet)` bytes."""

    def __init__(self, respond: Callable[[Packet], bytes]) -> None:
        self.respond = respond
        self.received: list[Packet] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = Endpoint("127.0.0.1", self.listener.getsockname()[1])
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while (decoded := decode(buffer)) is not None:
                packet, size = decoded
                buffer = buffer[size:]
                self.received.append(packet)
                reply = self.respond(packet)
                if reply:
                    try:
                        conn.sendall(reply)
                    except OSError:
                        return

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def fakes() -> Iterator[list[FakeGearmand]]:
    made: list[FakeGearmand] = []
    yield made
    for fake in made:
        fake.close()


def closed_port() -> Endpoint:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return Endpoint("127.0.0.1", sock.getsockname()[1])  # nobody listens once closed


def acking(name: bytes) -> Callable[[Packet], bytes]:
    counter = iter(range(1_000_000))

    def respond(packet: Packet) -> bytes:
        if packet.type.name.startswith("SUBMIT_JOB"):
            return answer(PacketType.JOB_CREATED, b"H:%s:%d" % (name, next(counter)))
        return b""

    return respond


def test_background_submit_fails_over_from_a_refused_server(fakes: list[FakeGearmand]) -> None:
    fakes.append(FakeGearmand(acking(b"b")))
    with Client(servers=[closed_port(), fakes[0].endpoint], retry_timeout=3) as client:
        for _ in range(3):
            assert client.submit_background("f", b"x").startswith(b"H:b:")
    uniques = [p.args[1].decode() for p in fakes[0].received]
    assert len(set(uniques)) == 3
    assert all(uuid.UUID(u).version == 4 for u in uniques)


def test_given_unique_and_priority_are_sent(fakes: list[FakeGearmand]) -> None:
    fakes.append(FakeGearmand(acking(b"a")))
    with Client(servers=[fakes[0].endpoint]) as client:
        client.submit_background("img-resize", "p", unique="u-1", priority="high")
    packet = fakes[0].received[0]
    assert packet.type is PacketType.SUBMIT_JOB_HIGH_BG
    assert packet.args == (b"img-resize", b"u-1", b"p")


def test_queue_error_is_retried_elsewhere(fakes: list[FakeGearmand]) -> None:
    fakes.append(FakeGearmand(lambda p: answer(PacketType.ERROR, b"QUEUE_ERROR", b"full")))
    fakes.append(FakeGearmand(acking(b"ok")))
    with Client(servers=[f.endpoint for f in fakes]) as client:
        for _ in range(4):
            assert client.submit_background("f", b"x").startswith(b"H:ok:")


def test_no_server_acknowledges_means_an_error(fakes: list[FakeGearmand]) -> None:
    fakes.append(FakeGearmand(lambda p: answer(PacketType.ERROR, b"QUEUE_ERROR", b"full")))
    with (
        Client(servers=[fakes[0].endpoint, closed_port()], retry_timeout=0.3) as client,
        pytest.raises(NoServerError, match="no server acknowledged"),
    ):
        client.submit_background("f", b"x")


def test_silent_server_times_out_and_the_job_goes_elsewhere(fakes: list[FakeGearmand]) -> None:
    fakes.append(FakeGearmand(lambda p: b""))  # accepts, never answers (like a SIGSTOPped one)
    fakes.append(FakeGearmand(acking(b"live")))
    client = Client(servers=[f.endpoint for f in fakes], read_timeout=0.2, retry_timeout=5)
    with client:
        handles = [client.submit_background("f", b"x", unique="same") for _ in range(3)]
    assert all(h.startswith(b"H:live:") for h in handles)


def foreground(result: Callable[[Packet], bytes]) -> Callable[[Packet], bytes]:
    def respond(packet: Packet) -> bytes:
        if packet.type is PacketType.SUBMIT_JOB:
            return answer(PacketType.JOB_CREATED, b"H:1") + result(packet)
        if packet.type is PacketType.OPTION_REQ:
            return answer(PacketType.OPTION_RES, *packet.args)
        return b""

    return respond


def test_foreground_result_and_failure(fakes: list[FakeGearmand]) -> None:
    fakes.append(
        FakeGearmand(
            foreground(
                lambda p: (
                    answer(PacketType.WORK_STATUS, b"H:1", b"1", b"2")
                    + answer(PacketType.WORK_COMPLETE, b"H:1", p.args[2][::-1])
                )
            )
        )
    )
    fakes.append(FakeGearmand(foreground(lambda p: answer(PacketType.WORK_FAIL, b"H:1"))))
    with Client(servers=[fakes[0].endpoint]) as client:
        assert client.submit("rev", b"abc") == b"cba"
    with Client(servers=[fakes[1].endpoint]) as client, pytest.raises(JobFailedError):
        client.submit("rev", b"abc")


def test_foreground_job_is_rerun_when_its_server_dies(fakes: list[FakeGearmand]) -> None:
    def dies(packet: Packet) -> bytes:
        for conn in fakes[0].conns:
            conn.shutdown(socket.SHUT_RDWR)
        return b""

    fakes.append(FakeGearmand(foreground(dies)))
    fakes.append(
        FakeGearmand(foreground(lambda p: answer(PacketType.WORK_COMPLETE, b"H:1", b"done")))
    )
    failed_over: list[Endpoint] = []
    servers = [f.endpoint for f in fakes]
    with Client(servers=servers, retry_timeout=5, on_failover=failed_over.append) as client:
        assert [client.submit("f", b"x", timeout=5) for _ in range(4)] == [b"done"] * 4
    first = [p.args[1] for p in fakes[0].received if p.type is PacketType.SUBMIT_JOB]
    second = [p.args[1] for p in fakes[1].received if p.type is PacketType.SUBMIT_JOB]
    assert set(first) <= set(second)  # the re-run kept its unique
    assert failed_over == [fakes[0].endpoint] * len(first)  # each failover was told


def test_batch_resends_exactly_the_refused_job(fakes: list[FakeGearmand]) -> None:
    """The server refuses the 5th job and acknowledges all the others after it (as gearmand
    does): only the 5th is sent again, and the handles stay in job order."""
    refused = {"left": 1}

    def refuse_fifth(packet: Packet) -> bytes:
        if packet.args[1] == b"u4" and refused["left"]:
            refused["left"] -= 1
            return answer(PacketType.ERROR, b"QUEUE_ERROR", b"full")
        return answer(PacketType.JOB_CREATED, b"H:" + packet.args[1])

    fakes.append(FakeGearmand(refuse_fifth))
    jobs = [BackgroundJob("f", b"p", unique=f"u{i}") for i in range(10)]
    with Client(servers=[fakes[0].endpoint]) as client:
        handles = client.submit_background_many(jobs, window=2)
    assert handles == [b"H:u%d" % i for i in range(10)]
    sent = Counter(p.args[1] for p in fakes[0].received)
    assert sent == {b"u%d" % i: 2 if i == 4 else 1 for i in range(10)}


def test_batch_resends_only_what_was_not_acknowledged(fakes: list[FakeGearmand]) -> None:
    """The server drops the connection after 7 JOB_CREATED: the Client reconnects and sends
    from job 7 on, so every job is acknowledged exactly once and every handle is a real one."""
    acked: list[bytes] = []
    first: list[threading.Thread] = []

    def drop_after_seven(packet: Packet) -> bytes:
        first[:] = first or [threading.current_thread()]
        if threading.current_thread() is first[0] and len(acked) >= 7:
            if len(acked) == 7:
                acked.append(b"dropped")  # once: later packets of this connection go unanswered
                fakes[0].conns[0].shutdown(socket.SHUT_RDWR)
            return b""
        acked.append(packet.args[1])
        return answer(PacketType.JOB_CREATED, b"H:" + packet.args[1])

    fakes.append(FakeGearmand(drop_after_seven))
    jobs = [("f", b"p", f"u{i}") for i in range(50)]
    with Client(servers=[fakes[0].endpoint], retry_timeout=5) as client:
        handles = client.submit_background_many(jobs, window=10)
    assert len(fakes[0].conns) == 2
    expected = [b"u%d" % i for i in range(50)]
    assert acked == [*expected[:7], b"dropped", *expected[7:]]
    assert handles == [b"H:" + u for u in expected]


def test_batch_reports_what_was_acknowledged_when_no_server_is_left(
    fakes: list[FakeGearmand],
) -> None:
    acked: list[bytes] = []

    def die_after_three(packet: Packet) -> bytes:
        if len(acked) == 3:
            fakes[0].close()  # no more connections either
            return b""
        acked.append(packet.args[1])
        return answer(PacketType.JOB_CREATED, b"H:" + packet.args[1])

    fakes.append(FakeGearmand(die_after_three))
    jobs = [("f", b"p", f"u{i}") for i in range(10)]
    with (
        Client(servers=[fakes[0].endpoint], retry_timeout=0.5) as client,
        pytest.raises(NoServerError) as info,
    ):
        client.submit_background_many(jobs, window=4)
    assert info.value.acknowledged == 3
    assert info.value.handles == [b"H:u0", b"H:u1", b"H:u2"] + [None] * 7


def test_bad_batch_raises_before_anything_is_sent(fakes: list[FakeGearmand]) -> None:
    fakes.append(FakeGearmand(acking(b"a")))
    with Client(servers=[fakes[0].endpoint]) as client:
        with pytest.raises(ValueError, match="contains NUL"):
            client.submit_background_many([("f", b"p", "ok"), ("f", b"p", "bad\0")])
        with pytest.raises(ValueError, match="urgent"):
            client.submit_background_many([("f", b"p"), ("f", b"p", None, "urgent")])
        with pytest.raises(TypeError, match="payload is bytes or str"):
            client.submit_background_many([("f", 5)])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="a job is"):
            client.submit_background_many(["f"])  # type: ignore[list-item]
    assert fakes[0].received == []


def test_batch_generates_distinct_uuid_uniques(fakes: list[FakeGearmand]) -> None:
    fakes.append(FakeGearmand(acking(b"a")))
    with Client(servers=[fakes[0].endpoint]) as client:
        handles = client.submit_background_many(
            [("f", b"p")] * 48 + [("f", b"p", ""), ("f", b"p", None), ("f", "s", None, "low")]
        )
        client.submit_background("f", b"p", unique="")
    assert len(handles) == 51
    uniques = [p.args[1].decode() for p in fakes[0].received]
    assert len(set(uniques)) == 52 and all(uuid.UUID(u) for u in uniques)  # never an empty one
    assert fakes[0].received[-2].type is PacketType.SUBMIT_JOB_LOW_BG


def test_new_uniques_are_uuid4() -> None:
    values = new_uniques(1000)
    assert len(set(values)) == 1000
    for value in values:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == value
    assert new_uniques(0) == []


def test_server_lists_parse() -> None:
    assert parse_servers("a:1, b:2,a:1") == [Endpoint("a", 1), Endpoint("b", 2)]
    assert parse_servers(["c"]) == [Endpoint("c", 4730)]
    with pytest.raises(ConfigError):
        parse_servers("")
    with pytest.raises(ConfigError, match="either"):
        Client()
    assert StaticServers(["x:1"]).servers() == [Endpoint("x", 1)]


def worker_server(jobs: list[bytes]) -> Callable[[Packet], bytes]:
    """A fake gearmand handing out `jobs` to GRAB_JOB_UNIQ, then NO_JOB."""

    def respond(packet: Packet) -> bytes:
        if packet.type is PacketType.GRAB_JOB_UNIQ:
            if not jobs:
                return answer(PacketType.NO_JOB)
            payload = jobs.pop(0)
            return answer(PacketType.JOB_ASSIGN_UNIQ, b"H:" + payload, b"rev", payload, payload)
        return b""

    return respond


def test_worker_serves_every_server_and_sleeps(fakes: list[FakeGearmand]) -> None:
    fakes.append(FakeGearmand(worker_server([b"a1", b"a2"])))
    fakes.append(FakeGearmand(worker_server([b"b1"])))
    worker = Worker(servers=[closed_port()] + [f.endpoint for f in fakes])
    ran: list[str] = []
    worker.register("rev", lambda job: (ran.append(job.unique), job.payload[::-1])[1])
    thread = threading.Thread(target=worker.work)
    thread.start()
    try:
        wait_for(lambda: all(PacketType.PRE_SLEEP in types(f) for f in fakes))
        assert sorted(ran) == ["a1", "a2", "b1"]
        completes = [p for p in fakes[0].received if p.type is PacketType.WORK_COMPLETE]
        assert [p.args for p in completes] == [(b"H:a1", b"1a"), (b"H:a2", b"2a")]
        grabs = types(fakes[0]).count(PacketType.GRAB_JOB_UNIQ)
        threading.Event().wait(0.3)  # asleep: no polling while nothing happens
        assert types(fakes[0]).count(PacketType.GRAB_JOB_UNIQ) == grabs
    finally:
        worker.stop()
        thread.join(5)
        worker.close()
    assert not thread.is_alive()


def test_worker_wakes_on_noop_and_reconnects(fakes: list[FakeGearmand]) -> None:
    jobs: list[bytes] = []
    fakes.append(FakeGearmand(worker_server(jobs)))
    worker = Worker(servers=[fakes[0].endpoint], min_backoff=0.05)
    worker.register("rev", lambda job: None)
    thread = threading.Thread(target=worker.work)
    thread.start()
    try:
        wait_for(lambda: PacketType.PRE_SLEEP in types(fakes[0]))
        jobs.append(b"late")
        fakes[0].conns[0].sendall(answer(PacketType.NOOP))
        wait_for(lambda: PacketType.WORK_COMPLETE in types(fakes[0]))
        fakes[0].conns[0].shutdown(socket.SHUT_RDWR)  # the server drops us
        wait_for(lambda: len(fakes[0].conns) == 2)
        wait_for(lambda: types(fakes[0]).count(PacketType.CAN_DO) == 2)
    finally:
        worker.stop()
        thread.join(5)
        worker.close()


def test_worker_fails_jobs_whose_handler_raises(fakes: list[FakeGearmand]) -> None:
    fakes.append(FakeGearmand(worker_server([b"x"])))
    worker = Worker(servers=[fakes[0].endpoint])

    def boom(job: object) -> bytes:
        raise RuntimeError("boom")

    worker.register("rev", boom)
    thread = threading.Thread(target=worker.work)
    thread.start()
    try:
        wait_for(lambda: PacketType.WORK_FAIL in types(fakes[0]))
    finally:
        worker.stop()
        thread.join(5)
        worker.close()


def types(fake: FakeGearmand) -> list[PacketType]:
    return [p.type for p in list(fake.received)]


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.mark.integration
def test_zookeeper_discovery_follows_members(zookeeper: Endpoint) -> None:
    from kazoo.client import KazooClient

    cluster = f"c{uuid.uuid4().hex[:8]}"
    zk = KazooClient(hosts=str(zookeeper))
    zk.start(timeout=10)
    source = ZooKeeperServers(str(zookeeper), cluster)
    changes = threading.Event()
    source.add_listener(changes.set)
    try:
        assert source.servers() == []
        base = "/gearctl/" + cluster + "/members/"

        def record(node: str, port: int, state: str) -> bytes:
            return MemberRecord(node, f"127.0.0.1:{port}", "s", 1, 2, state).encode()

        zk.create(base + "n1", record("n1", 1001, "serving"), ephemeral=True, makepath=True)
        zk.create(base + "n2", record("n2", 1002, "restarting"), ephemeral=True)
        wait_for(lambda: source.servers() == [Endpoint("127.0.0.1", 1001)])
        assert changes.is_set()
        zk.set(base + "n2", record("n2", 1002, "restoring"))
        wait_for(lambda: len(source.servers()) == 2)
        assert live_servers(str(zookeeper), cluster) == ["127.0.0.1:1001", "127.0.0.1:1002"]
        zk.delete(base + "n1")
        wait_for(lambda: source.servers() == [Endpoint("127.0.0.1", 1002)])
        zk.create(base + "n1", record("n1", 1003, "serving"), ephemeral=True)
        wait_for(lambda: len(source.servers()) == 2)
        assert Endpoint("127.0.0.1", 1003) in source.servers()
    finally:
        source.close()
        zk.stop()
        zk.close()
