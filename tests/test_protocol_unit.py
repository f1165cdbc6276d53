"""Pure unit tests of the Gearman packet codec and of the admin reply parsers."""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.endpoint import Endpoint
from cluster.errors import GearmanConnectionError, GearmanServerError, ProtocolError
from cluster.gearman.admin import (
    AdminCommandError,
    FunctionStatus,
    WorkerInfo,
    parse_ok,
    parse_status,
    parse_workers,
    split_reply,
)
from cluster.gearman.protocol import (
    ARG_COUNTS,
    BATCH_BYTES,
    MAX_PACKET_SIZE,
    BatchConnectionError,
    BatchSubmitError,
    GearmanConnection,
    Magic,
    Packet,
    PacketType,
    Priority,
    _packet_batches,
    background_submit_type,
    decode,
    encode,
    encode_background,
    foreground_submit_type,
)

REQUIRED_TYPES = {
    "CAN_DO": 1, "CANT_DO": 2, "RESET_ABILITIES": 3, "PRE_SLEEP": 4, "NOOP": 6, "SUBMIT_JOB": 7,
    "JOB_CREATED": 8, "GRAB_JOB": 9, "NO_JOB": 10, "JOB_ASSIGN": 11, "WORK_STATUS": 12,
    "WORK_COMPLETE": 13, "WORK_FAIL": 14, "GET_STATUS": 15, "ECHO_REQ": 16, "ECHO_RES": 17,
    "SUBMIT_JOB_BG": 18, "ERROR": 19, "STATUS_RES": 20, "SUBMIT_JOB_HIGH": 21,
    "SET_CLIENT_ID": 22, "CAN_DO_TIMEOUT": 23, "WORK_EXCEPTION": 25, "OPTION_REQ": 26,
    "OPTION_RES": 27, "WORK_DATA": 28, "WORK_WARNING": 29, "GRAB_JOB_UNIQ": 30,
    "JOB_ASSIGN_UNIQ": 31, "SUBMIT_JOB_HIGH_BG": 32, "SUBMIT_JOB_LOW": 33, "SUBMIT_JOB_LOW_BG": 34,
}  # fmt: skip


def sample(type_: PacketType, magic: Magic = Magic.REQ) -> Packet:
    """A packet of `type_` whose last argument holds NUL bytes (allowed there)."""
    count = ARG_COUNTS[type_]
    args = tuple(f"arg{i}".encode() for i in range(count - 1))
    return Packet(magic, type_, (*args, b"last\0with\0nuls") if count else ())


def header(magic: bytes, type_: int, size: int) -> bytes:
    return struct.pack(">4sII", magic, type_, size)


def test_packet_type_numbers_match_the_spec() -> None:
    assert {name: PacketType[name].value for name in REQUIRED_TYPES} == REQUIRED_TYPES
    assert set(ARG_COUNTS) == set(PacketType)


def test_arg_counts_of_common_types() -> None:
    for type_ in (PacketType.SUBMIT_JOB, PacketType.SUBMIT_JOB_BG, PacketType.SUBMIT_JOB_LOW_BG):
        assert ARG_COUNTS[type_] == 3
    assert ARG_COUNTS[PacketType.JOB_ASSIGN_UNIQ] == 4
    assert ARG_COUNTS[PacketType.WORK_COMPLETE] == 2
    assert ARG_COUNTS[PacketType.ERROR] == 2
    assert ARG_COUNTS[PacketType.JOB_CREATED] == 1
    assert ARG_COUNTS[PacketType.NOOP] == 0


@pytest.mark.parametrize("type_", list(PacketType), ids=lambda t: t.name)
@pytest.mark.parametrize("magic", list(Magic), ids=lambda m: m.name)
def test_round_trip_every_type(type_: PacketType, magic: Magic) -> None:
    packet = sample(type_, magic)
    data = encode(packet)
    assert decode(data) == (packet, len(data))
    assert decode(data + b"\0REQ trailing") == (packet, len(data))


def test_encode_known_bytes() -> None:
    packet = Packet(Magic.REQ, PacketType.SUBMIT_JOB_BG, (b"f", b"u", b"x"))
    assert encode(packet) == b"\0REQ\x00\x00\x00\x12\x00\x00\x00\x05f\0u\0x"
    assert encode(Packet(Magic.RES, PacketType.NOOP, ())) == b"\0RES\0\0\0\x06\0\0\0\0"


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode(sample(PacketType.JOB_ASSIGN_UNIQ, Magic.RES))
    assert decode(bytearray(data)) == decode(memoryview(data)) == decode(data)


@pytest.mark.parametrize("type_", list(PacketType), ids=lambda t: t.name)
def test_truncation_at_every_byte_is_incomplete(type_: PacketType) -> None:
    data = encode(sample(type_))
    for cut in range(len(data)):
        assert decode(data[:cut]) is None


def test_bad_magic() -> None:
    with pytest.raises(ProtocolError, match="magic"):
        decode(header(b"\0XYZ", 6, 0))


def test_unknown_type() -> None:
    with pytest.raises(ProtocolError, match="unknown packet type 5"):
        decode(header(b"\0RES", 5, 0))


def test_oversized_declared_size_fails_before_the_data_arrives() -> None:
    with pytest.raises(ProtocolError, match="limit"):
        decode(header(b"\0RES", 13, MAX_PACKET_SIZE + 1))


@pytest.mark.parametrize(
    ("type_", "data"),
    [
        (PacketType.NOOP, b"x"),
        (PacketType.WORK_COMPLETE, b"handle-without-data"),
        (PacketType.SUBMIT_JOB, b"f\0u"),
        (PacketType.JOB_ASSIGN_UNIQ, b""),
        (PacketType.ERROR, b"CODE"),
    ],
)
def test_wrong_argument_count(type_: PacketType, data: bytes) -> None:
    with pytest.raises(ProtocolError, match=f"{type_.name} must carry"):
        decode(header(b"\0RES", type_, len(data)) + data)


def test_encode_rejects_wrong_args() -> None:
    with pytest.raises(ProtocolError, match="takes 3 arguments"):
        encode(Packet(Magic.REQ, PacketType.SUBMIT_JOB, (b"f", b"payload")))
    with pytest.raises(ProtocolError, match="only the last"):
        encode(Packet(Magic.REQ, PacketType.SUBMIT_JOB, (b"f\0g", b"u", b"payload")))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    try:
        result = decode(data)
    except ProtocolError:
        return
    if result is not None:
        packet, used = result
        assert 12 <= used <= len(data)
        assert encode(packet) == data[:used]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(list(PacketType)),
    st.binary(max_size=8),
    st.binary(max_size=64),
)
def test_decode_valid_header_with_arbitrary_data(
    type_: PacketType, magic_tail: bytes, data: bytes
) -> None:
    """Real magic and type, random data: a packet or ProtocolError, never anything else."""
    try:
        result = decode(header(b"\0RES", type_, len(data)) + data + magic_tail)
    except ProtocolError:
        expected = ARG_COUNTS[type_]
        assert data.count(b"\0") + 1 < expected if expected else data
        return
    assert result is not None
    assert result[0].type is type_


no_nul = st.binary(max_size=40).filter(lambda b: b"\0" not in b)


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    type_ = draw(st.sampled_from(list(PacketType)))
    count = ARG_COUNTS[type_]
    args = [draw(no_nul) for _ in range(count - 1)]
    if count:
        args.append(draw(st.binary(max_size=200)))
    return Packet(draw(st.sampled_from(list(Magic))), type_, tuple(args))


@settings(max_examples=500, deadline=None)
@given(packets())
def test_round_trip_property(packet: Packet) -> None:
    data = encode(packet)
    assert decode(data) == (packet, len(data))


@settings(max_examples=100, deadline=None)
@given(st.lists(packets(), min_size=1, max_size=10))
def test_stream_of_packets_decodes_in_order(stream: list[Packet]) -> None:
    data = b"".join(map(encode, stream))
    decoded, offset = [], 0
    while offset < len(data):
        result = decode(memoryview(data)[offset:])
        assert result is not None
        decoded.append(result[0])
        offset += result[1]
    assert decoded == stream


def test_priorities() -> None:
    assert [Priority(p).flags for p in ("high", "normal", "low")] == [0, 1, 2]
    assert [Priority.from_flags(f) for f in (0, 1, 2)] == [
        Priority.HIGH,
        Priority.NORMAL,
        Priority.LOW,
    ]
    assert background_submit_type("high") is PacketType.SUBMIT_JOB_HIGH_BG
    assert background_submit_type(Priority.NORMAL) is PacketType.SUBMIT_JOB_BG
    assert background_submit_type("low") is PacketType.SUBMIT_JOB_LOW_BG
    assert foreground_submit_type("high") is PacketType.SUBMIT_JOB_HIGH
    assert foreground_submit_type("normal") is PacketType.SUBMIT_JOB
    assert foreground_submit_type(Priority.LOW) is PacketType.SUBMIT_JOB_LOW
    with pytest.raises(ValueError, match="urgent"):
        background_submit_type("urgent")
    with pytest.raises(ValueError, match="flags 7"):
        Priority.from_flags(7)


def test_batches_encode_like_encode() -> None:
    jobs = [("f", f"u{i}", b"p\0ay", ("high", "normal", "low")[i % 3]) for i in range(5)]
    packets = encode_background([(f, d, u, p) for f, u, d, p in jobs], iter(()))
    chunks = list(_packet_batches(packets, 2))
    assert [count for _, count in chunks] == [2, 2, 1]
    expected = b"".join(
        encode(Packet(Magic.REQ, background_submit_type(p), (f.encode(), u.encode(), d)))
        for f, u, d, p in jobs
    )
    assert b"".join(data for data, _ in chunks) == expected


def test_encode_background_takes_every_job_shape() -> None:
    @dataclass
    class Job:
        function: str
        payload: bytes
        unique: str | None
        priority: str

    jobs = [
        ("f", b"p\0ay"),
        ("f", "text", "u1"),
        ("g", b"", None, "high"),
        Job("h", b"x", "u2", "low"),
        Job("h", b"y", None, "low"),
    ]
    expected = [
        (PacketType.SUBMIT_JOB_BG, (b"f", b"gen-0", b"p\0ay")),
        (PacketType.SUBMIT_JOB_BG, (b"f", b"u1", b"text")),
        (PacketType.SUBMIT_JOB_HIGH_BG, (b"g", b"gen-1", b"")),
        (PacketType.SUBMIT_JOB_LOW_BG, (b"h", b"u2", b"x")),
        (PacketType.SUBMIT_JOB_LOW_BG, (b"h", b"gen-2", b"y")),
    ]
    uniques = (f"gen-{n}" for n in range(10))
    packets = encode_background(jobs, uniques)
    assert packets == [encode(Packet(Magic.REQ, t, args)) for t, args in expected]
    for bad, error in [
        (("f\0", b""), ValueError),
        (("f", b"", "u\0"), ValueError),
        (("f", b"", None, "urgent"), ValueError),
        (("f", 5), TypeError),
        (("f",), TypeError),
    ]:
        with pytest.raises(error):
            encode_background([("ok", b""), bad], uniques)


def test_batches_are_capped_in_bytes() -> None:
    packets = [b"x" * (BATCH_BYTES // 2)] * 5
    assert [count for _, count in _packet_batches(packets, 1000)] == [2, 2, 1]
    assert [count for _, count in _packet_batches([b"x" * BATCH_BYTES * 2, b"y"], 9)] == [1, 1]
    assert [count for _, count in _packet_batches([b"y"] * 7, 3)] == [3, 3, 1]
    assert list(_packet_batches([], 3)) == []


def created(handle: bytes) -> bytes:
    return encode(Packet(Magic.RES, PacketType.JOB_CREATED, (handle,)))


HANDLES = st.one_of(
    st.binary(max_size=20),
    st.binary(min_size=250, max_size=300),  # size no longer fits in the header's last byte
    st.sampled_from([b"H:host:1", b"\0RES\0\0\0\x08\0\0\0\x05", created(b"inner")]),
)


@settings(max_examples=400, deadline=None)
@given(
    handles=st.lists(HANDLES, max_size=12),
    tail=st.sampled_from([b"", encode(Packet(Magic.RES, PacketType.ERROR, (b"E", b"x")))]),
    cut=st.integers(min_value=0, max_value=40),
    count=st.integers(min_value=0, max_value=15),
    skip=st.integers(min_value=0, max_value=3),
)
def test_take_created_takes_exactly_the_whole_leading_answers(
    handles: list[bytes], tail: bytes, cut: int, count: int, skip: int
) -> None:
    """Whatever the handles hold (NUL bytes, header look-alikes, 256+ bytes), the buffer is
    cut off, or another packet follows: exactly the leading complete JOB_CREATED packets are
    taken, at most `count`, and the offset lands right after the last one taken."""
    stream = b"".join(map(created, handles)) + tail
    data = b"x" * skip + stream[: max(0, len(stream) - cut)]
    conn = GearmanConnection(Endpoint("127.0.0.1", 1))
    conn._buffer, conn._offset = bytearray(data), skip
    complete, position = [], skip
    for handle in handles:
        end = position + len(created(handle))
        if end > len(data) or len(complete) == count:
            break
        complete.append(handle)
        position = end
    taken: list[bytes] = [b"before"]
    assert conn._take_created(count, taken) == count - len(complete)
    assert taken == [b"before", *complete]
    assert conn._offset == position


def test_batch_errors_report_acknowledged_and_refused() -> None:
    error = BatchSubmitError([(1, "QUEUE_ERROR", "store full")], [b"H:1", None, b"H:3"])
    assert isinstance(error, GearmanServerError)
    assert (error.code, error.text, error.acknowledged, error.refused) == (
        "QUEUE_ERROR",
        "store full",
        2,
        [1],
    )
    assert "2 jobs of the batch acknowledged, 1 refused" in str(error)
    lost = BatchConnectionError("gearmand closed the connection", [b"H:1", None])
    assert isinstance(lost, GearmanConnectionError)
    assert (lost.acknowledged, lost.handles) == (1, [b"H:1", None])
    assert str(lost) == (
        "gearmand closed the connection (1 jobs of the batch acknowledged, 1 refused before that)"
    )


# Admin reply parsing.


def test_parse_status() -> None:
    assert parse_status("img-resize\t3\t1\t2\nf\t0\t0\t1") == [
        FunctionStatus("img-resize", 3, 1, 2),
        FunctionStatus("f", 0, 0, 1),
    ]
    assert parse_status("") == []
    with pytest.raises(ProtocolError, match="4 tab-separated"):
        parse_status("garbage")
    with pytest.raises(ProtocolError, match="non-numeric"):
        parse_status("f\tx\t0\t0")


def test_parse_workers() -> None:
    text = "20 127.0.0.1 - :\n21 127.0.0.1 w1 : f img-resize"
    assert parse_workers(text) == [
        WorkerInfo(20, "127.0.0.1", "-", ()),
        WorkerInfo(21, "127.0.0.1", "w1", ("f", "img-resize")),
    ]
    with pytest.raises(ProtocolError):
        parse_workers("hello world")


def test_parse_ok_and_err() -> None:
    assert parse_ok("version", "OK 1.1.20+ds\n") == "1.1.20+ds"
    assert parse_ok("shutdown", "OK\n") == ""
    with pytest.raises(AdminCommandError) as info:
        parse_ok("shutdown", "ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n")
    assert info.value.code == "UNKNOWN_COMMAND"
    assert info.value.text == "Unknown server commandshutdown"
    with pytest.raises(ProtocolError, match="expected OK or ERR"):
        parse_ok("version", "HELLO")


def test_split_reply() -> None:
    assert split_reply("status", b".\n") == ""
    assert split_reply("status", b"f\t1\t0\t0\n.\n") == "f\t1\t0\t0"
    assert split_reply("status", b"f\t1\t0\t0\n") is None
    assert split_reply("status", b"f\t1\t0\t0\n.") is None
    assert split_reply("status", b"") is None
    with pytest.raises(AdminCommandError, match="UNKNOWN_COMMAND"):
        split_reply("status", b"ERR UNKNOWN_COMMAND x\r\n")
    with pytest.raises(ProtocolError, match="after"):
        split_reply("status", b"f\t1\t0\t0\n.\nmore")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_admin_parsers_on_arbitrary_bytes(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    for parse in (
        lambda: split_reply("status", data),
        lambda: parse_status(text),
        lambda: parse_workers(text),
        lambda: parse_ok("version", text),
    ):
        with contextlib.suppress(ProtocolError, AdminCommandError):
            parse()
