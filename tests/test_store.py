"""Store against a real memcached (and a real gearmand writing to it with the real CLI)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import store as store_module
from cluster.endpoint import Endpoint
from cluster.errors import StoreError
from cluster.jobkey import AmbiguousKeyError, SplitMethod, parse_job_key
from cluster.local.memcached_server import start_memcached
from cluster.process import stop_pid
from cluster.store import Store, StoreClosed, StoredItem, parse_metadump_line

HOST = "127.0.0.1"
integration = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for(ready, proc: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{what} did not answer within {timeout}s"
        time.sleep(0.02)


@pytest.fixture
def memcached() -> Iterator[Endpoint]:
    """A memcached of our own on a free loopback port; stopped by its pid."""
    if shutil.which("memcached") is None:
        pytest.skip("memcached is not installed")
    endpoint = Endpoint(HOST, free_port())
    argv = ["memcached", "-u", "root", "-l", HOST, "-p", str(endpoint.port), "-M", "-m", "64"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(Store(endpoint, timeout=0.5).ping, proc, "memcached")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def gearmand_status(endpoint: Endpoint) -> bytes | None:
    """The admin `status` reply, or None while gearmand does not answer it."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            sock.sendall(b"status\n")
            reply = b""
            while not (reply == b".\n" or reply.endswith(b"\n.\n")):
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                reply += chunk
            return reply
    except OSError:
        return None


@pytest.fixture
def gearmand(memcached: Endpoint, tmp_path: Path) -> Iterator[Endpoint]:
    """A real gearmand persisting to `memcached` under prefix `g7_`; stopped by its pid."""
    if shutil.which("gearmand") is None or shutil.which("gearman") is None:
        pytest.skip("gearmand and gearman-tools are not installed")
    endpoint = Endpoint(HOST, free_port())
    argv = ["gearmand", "-p", str(endpoint.port), "-L", HOST, "-t", "1", "-q", "libmemcached",
            f"--libmemcached-servers={memcached}", "--libmemcached-prefix=g7_",
            "-l", str(tmp_path / "g.log"), "-P", str(tmp_path / "g.pid")]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: gearmand_status(endpoint) is not None, proc, "gearmand")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def fill(store: Store, count: int, prefix: str = "g1_img-resize-u-") -> list[str]:
    keys = [f"{prefix}{i}" for i in range(count)]
    for i, key in enumerate(keys):
        store.set(key, b"payload-%d" % i, i % 3)
    return keys


def test_metadump_lines_parse_and_bad_lines_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    line = b"key=g1_img-resize-u-1 exp=-1 la=1795723763 cas=7 fetch=no cls=1 size=88"
    assert parse_metadump_line(line) == StoredItem("g1_img-resize-u-1", 7, 88, 1795723763)
    assert parse_metadump_line(b"key=g1_f-u exp=-1 cas=3 size=60") == StoredItem("g1_f-u", 3, 60)
    odd = b"key=g1_f-u exp=-1 la=? cas=3 fetch=no cls=1 size=60"  # by the pattern, not position
    assert parse_metadump_line(odd) == StoredItem("g1_f-u", 3, 60)
    encoded = b"key=g1_%C3%BCn-a%09b%FF exp=-1 la=1 cas=2 fetch=no cls=1 size=70"
    item = parse_metadump_line(encoded)
    assert item is not None
    assert item.key.encode("utf-8", "surrogateescape") == b"g1_\xc3\xbcn-a\tb\xff"
    for bad in (b"", b"garbage", b"key=x cas=abc size=1", b"key=x exp=-1 size=3"):
        assert parse_metadump_line(bad) is None
    assert "unreadable metadump line" in caplog.text


class LossyStore(Store):
    """A store whose metadump never lists one of its items."""

    def __init__(self) -> None:
        super().__init__(Endpoint(HOST, 1))
        self.passes = 0

    def items(self) -> list[StoredItem]:
        self.passes += 1
        return [StoredItem("g1_f-2", 9, 70), StoredItem("g1_f-1", 4, 70)]

    def curr_items(self) -> int:
        return 3


def test_snapshot_gives_up_after_stale_passes(caplog: pytest.LogCaptureFixture) -> None:
    store = LossyStore()
    assert [item.key for item in store.snapshot(stale_passes=3)] == ["g1_f-1", "g1_f-2"]
    assert store.passes == 4  # one pass that found keys, then three that found nothing new
    assert "2 of 3 keys after 4 metadump passes" in caplog.text


def test_snapshot_asks_the_predicate_once_a_key() -> None:
    store, asked = LossyStore(), []
    keep = lambda item: asked.append(item.key) or item.key == "g1_f-1"  # noqa: E731
    assert store.snapshot(keep, expected=2, stale_passes=3) == [StoredItem("g1_f-1", 4, 70)]
    assert store.passes == 4
    assert sorted(asked) == ["g1_f-1", "g1_f-2"]  # not once a pass


class HangingUpStore(LossyStore):
    """A store that hangs up on the first metadump."""

    def items(self) -> list[StoredItem]:
        if self.passes == 0:
            self.passes += 1
            raise StoreClosed("memcached store 127.0.0.1:1 closed the connection during metadump")
        return [*super().items(), StoredItem("g1_f-3", 12, 70)]


def test_snapshot_lists_again_after_a_hang_up() -> None:
    store = HangingUpStore()
    assert [item.key for item in store.snapshot()] == ["g1_f-1", "g1_f-2", "g1_f-3"]
    assert store.passes == 2
    with pytest.raises(StoreClosed):
        HangingUpStore().snapshot(max_passes=1)


@integration
def test_snapshot_returns_every_key_in_set_order(memcached: Endpoint) -> None:
    store = Store(memcached)
    keys = fill(store, 10_000)
    items = store.snapshot()
    assert [item.key for item in items] == keys
    assert len({item.key for item in items}) == store.curr_items() == 10_000
    assert [item.cas for item in items] == sorted(item.cas for item in items)


@integration
@pytest.mark.parametrize("read_size", [1, 7, 100])
def test_metadump_read_in_pieces_lists_every_key_once(
    memcached: Endpoint, read_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines (and the closing END) cut anywhere between two reads are put back together."""
    store = Store(memcached)
    keys = fill(store, 500)
    whole = store.items()
    monkeypatch.setattr(store_module, "METADUMP_READ", read_size)
    pieces = store.items()  # the LRU maintainer may have moved items between passes: sort
    assert sorted(pieces) == sorted(whole)
    assert sorted(item.key for item in pieces) == sorted(keys)


def serve_once(reply: bytes) -> Endpoint:
    """A one-connection fake memcached that sends `reply` to the first request, then hangs up."""
    listener = socket.create_server((HOST, 0))
    listener.settimeout(10)

    def answer() -> None:
        with listener, listener.accept()[0] as conn:
            conn.settimeout(10)
            conn.recv(4096)
            conn.sendall(reply)

    threading.Thread(target=answer, daemon=True).start()
    return Endpoint(HOST, listener.getsockname()[1])


LINE = b"key=g1_f-%d exp=-1 la=1 cas=%d fetch=no cls=1 size=70\n"


def test_metadump_cut_off_or_failing_midway_raises() -> None:
    lines = b"".join(LINE % (n, n) for n in range(3000))
    with pytest.raises(StoreClosed):
        Store(serve_once(lines + b"key=g1_f-x exp"), timeout=5).items()
    with pytest.raises(StoreError, match="SERVER_ERROR out of memory"):
        Store(serve_once(lines + b"SERVER_ERROR out of memory\r\n"), timeout=5).items()
    assert len(Store(serve_once(lines + b"END\r\n"), timeout=5).items()) == 3000
    assert Store(serve_once(b"END\r\n"), timeout=5).items() == []


@integration
def test_snapshot_finds_everything_after_reads_move_items_between_lru_segments(
    memcached: Endpoint,
) -> None:
    store = Store(memcached)
    keys = fill(store, 10_000)
    for key in keys[::10]:
        store.get(key)
        store.get(key)
    assert [item.key for item in store.snapshot()] == keys


@integration
def test_snapshot_with_predicate_and_expected_count(memcached: Endpoint) -> None:
    store = Store(memcached)
    old = fill(store, 300, prefix="g1_f-")
    fill(store, 200, prefix="g2_f-")
    items = store.snapshot(lambda item: item.key.startswith("g1_"), expected=300)
    assert [item.key for item in items] == old


@integration
def test_values_flags_and_deletes_round_trip(memcached: Endpoint) -> None:
    store = Store(memcached)
    store.set("g1_f-a", b"binary\r\n\x00payload", 0)
    store.set("g1_f-b", b"", 2)
    assert store.get("g1_f-a") == (b"binary\r\n\x00payload", 0)
    assert store.get("g1_missing") is None
    keys = [f"g1_f-{i}" for i in range(5000)]
    for i, key in enumerate(keys):
        store.set(key, b"v%d" % i, i % 3)
    found = store.get_many(["g1_f-b", "g1_missing", *keys])
    assert found["g1_f-b"] == (b"", 2)
    assert "g1_missing" not in found
    assert all(found[key] == (b"v%d" % i, i % 3) for i, key in enumerate(keys))
    assert store.delete("g1_f-a") is True
    assert store.delete("g1_f-a") is False
    assert store.delete_many([*keys, "g1_missing"]) == 5000
    assert store.get_many(keys) == {}
    assert [item.key for item in store.snapshot()] == ["g1_f-b"]
    assert store.bytes_used() > 0 and store.stats()["curr_items"] == "1"


@integration
def test_bulk_reads_leave_items_untouched(memcached: Endpoint) -> None:
    """`store inspect` tells a job's age from its last access: gearctl's reads must not count."""
    store = Store(memcached)
    store.set("g1_f-old", b"x", 0)
    (before,) = store.items()
    assert before.last_access is not None
    assert store.get_many(["g1_f-old"]) == {"g1_f-old": (b"x", 0)}
    with socket.create_connection((memcached.host, memcached.port), timeout=5) as conn:
        conn.sendall(b"lru_crawler metadump all\r\n")
        dump = b""
        while not dump.endswith(b"END\r\n"):
            dump += conn.recv(4096) or b"END\r\n"
    assert b"fetch=no" in dump, dump  # a plain mg would have marked it fetched (and bumped it)
    assert store.items() == [before]


@integration
def test_keys_pymemcache_refuses_still_go_through_bulk_calls(memcached: Endpoint) -> None:
    """gearmand stores a tab in a function name as it is; restore must read and delete it."""
    with socket.create_connection((memcached.host, memcached.port), timeout=2) as sock:
        sock.sendall(b"set g1_t\tab-\xffu 1 0 3\r\nabc\r\n")
        assert sock.recv(100) == b"STORED\r\n"
    (item,) = Store(memcached).snapshot()
    assert item.key.encode("utf-8", "surrogateescape") == b"g1_t\tab-\xffu"
    store = Store(memcached)
    assert store.get_many([item.key]) == {item.key: (b"abc", 1)}
    assert store.delete_many([item.key]) == 1
    assert store.curr_items() == 0


def test_bulk_calls_reach_keys_of_the_full_250_bytes(memcached: Endpoint) -> None:
    """memcached checks the 250-byte limit on a meta command's key as sent: base64 would
    make every key above 187 bytes unreachable (a restore failing on it forever)."""
    store = Store(memcached)
    keys = ["g1_" + "f" * 244 + "-u1", "g1_\xe9" + "f" * 242 + "-u1"]  # 250 bytes, also UTF-8
    for key in keys:
        assert len(key.encode()) == 250
        store.set(key, b"v", 2)
    assert store.get_many(keys) == {key: (b"v", 2) for key in keys}
    assert store.delete_many(keys) == 2
    assert store.curr_items() == 0


@integration
def test_unreachable_store_raises_store_error_fast() -> None:
    endpoint = Endpoint(HOST, free_port())
    store = Store(endpoint, timeout=0.5)
    assert store.ping() is False
    calls = (store.items, store.curr_items, lambda: store.get("k"), lambda: store.get_many(["k"]))
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StoreError, match=str(endpoint)):
            call()
        assert time.monotonic() - started < 0.5


@integration
def test_store_that_accepts_but_never_answers_times_out() -> None:
    with socket.socket() as listener:  # the kernel completes connects; nobody ever answers
        listener.bind((HOST, 0))
        listener.listen(8)
        endpoint = Endpoint(HOST, listener.getsockname()[1])
        store = Store(endpoint, timeout=0.3)
        for call in (store.items, store.stats, lambda: store.get("k")):
            started = time.monotonic()
            with pytest.raises(StoreError, match=str(endpoint)):
                call()
            assert time.monotonic() - started < 1.5


@integration
def test_jobs_from_real_gearmand_parse_back(gearmand: Endpoint, memcached: Endpoint) -> None:
    base = ["gearman", "-h", HOST, "-p", str(gearmand.port), "-b", "-f", "img-resize"]
    submits = [
        (["-u", "u-1"], "normal"),
        (["-I", "-u", "u-2"], "high"),
        (["-L", "-u", "u-3"], "low"),
        ([], "generated"),
    ]
    for options, payload in submits:
        subprocess.run([*base, *options, payload], check=True, timeout=10, capture_output=True)
    store = Store(memcached)
    items = store.snapshot()
    assert len(items) == store.curr_items() == 4
    values = store.get_many([item.key for item in items])
    jobs = [(parse_job_key(item.key, {"img-resize"}), *values[item.key]) for item in items]
    assert [(j.prefix, j.function, j.unique, payload, flags) for j, payload, flags in jobs[:3]] == [
        ("g7_", "img-resize", "u-1", b"normal", 1),
        ("g7_", "img-resize", "u-2", b"high", 0),
        ("g7_", "img-resize", "u-3", b"low", 2),
    ]
    generated = parse_job_key(items[3].key, ())  # function unknown: the UUID gives the split
    assert (generated.function, generated.method) == ("img-resize", SplitMethod.UUID_UNIQUE)
    assert values[items[3].key] == (b"generated", 1)
    with pytest.raises(AmbiguousKeyError):  # img-resize-u-1, no name known: deferred
        parse_job_key(items[0].key, ())


@integration
def test_stats_survive_a_memcached_restart_on_the_kept_open_connection(tmp_path: Path) -> None:
    """`stats` (the agent's store check) keeps its connection open: a memcached started again
    on the same port is answered on a new connection (its new pid), not reported down; a
    memcached that is gone is a StoreError."""
    endpoint = Endpoint(HOST, free_port())

    def start() -> subprocess.Popen[bytes]:
        return start_memcached(
            endpoint,
            memory_mb=64,
            log_path=tmp_path / "memcached.log",
            pid_path=tmp_path / "memcached.pid",
        )

    with Store(endpoint, timeout=2) as store:
        first = start()
        try:
            before = store.identity()
            assert before.pid == first.pid
        finally:
            stop_pid(first.pid)
            first.wait()
        second = start()
        try:
            assert store.identity().pid == second.pid != before.pid
        finally:
            stop_pid(second.pid)
            second.wait()
        with pytest.raises(StoreError, match="stats failed"):
            store.stats()
