"""The terminal host's link codec, and the server's journal passing keys on to the host."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lapce_bridge.core.errors import ErrorCategory, ErrorSeverity, InvalidParams
from lapce_bridge.core.matrix import DEFAULT_MATRIX, MatrixRow, Strategy
from lapce_bridge.host import link
from lapce_bridge.host.attach import hello, policy_from_wire, policy_to_wire
from lapce_bridge.host.places import host_places
from lapce_bridge.host.process import TerminalHost
from lapce_bridge.ipc.framing import Frame, FrameDecoder, encode
from lapce_bridge.ipc.idempotency import Idempotency
from lapce_bridge.ipc.journal import IdempotencyJournal
from lapce_bridge.terminal.recovery import CrashLoopPolicy

GREETING: tuple[dict[str, Any], bytes] = ({"k": "hello", "protocol": 2, "version": "1"}, b"")
MESSAGES: list[tuple[dict[str, Any], bytes]] = [
    ({"q": 1, "m": "terminal/execute", "c": 3, "t": 12.5}, b'{"command":"echo \\n hi"}'),
    ({"r": 1, "ok": True}, orjson.dumps({"output": "line\nline\n", "exitCode": 0})),
    ({"n": "terminal/data", "c": 3}, b'{"data":"\\u001b[0m"}'),
    ({"n": "terminal/commandFinished", "c": 3, "a": 1}, b'{"exitCode":0}'),
    ({"k": "closed", "c": 3}, b""),
]


def stream() -> bytes:
    return link.greeting(GREETING[0]) + b"".join(
        link.frame(header, payload) for header, payload in MESSAGES
    )


def decoded(chunks: list[bytes]) -> list[tuple[dict[str, Any], bytes]]:
    decoder = link.LinkDecoder(1 << 20)
    out = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def test_messages_come_back_whole_at_every_split() -> None:
    data = stream()
    for cut in range(len(data) + 1):
        assert decoded([data[:cut], data[cut:]]) == [GREETING, *MESSAGES]


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_messages_come_back_whole_however_the_bytes_arrive(cuts: list[int]) -> None:
    data = stream()
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert decoded(chunks) == [GREETING, *MESSAGES]


def test_the_payload_is_carried_as_it_was_encoded() -> None:
    payload = b'{"b":1,  "a":[1,2]}'  # not orjson's spelling: it must not be re-encoded
    data = link.greeting(GREETING[0]) + link.frame({"r": 7, "ok": True}, payload)
    (_, (header, carried)) = decoded([data])
    assert header == {"r": 7, "ok": True}
    assert carried == payload


def test_the_greeting_is_what_every_link_version_reads_first() -> None:
    """A host of link version 1 read every message as an LSP frame whose body is a header
    line and a payload: the greeting must stay that, so it can read a newer server's hello
    (and refuse it), and a newer server can read its refusal."""
    hello = {"k": "hello", "protocol": link.PROTOCOL_VERSION, "version": "9.9"}
    events = FrameDecoder(1 << 20).feed(link.greeting(hello))
    assert len(events) == 1
    assert type(events[0]) is Frame
    head, _, payload = events[0].body.partition(b"\n")
    assert (orjson.loads(head), payload) == (hello, b"")
    # A version-1 host's refusal, in its own framing, is read by this decoder.
    refusal = {"k": "refused", "reason": "host 0.1 (link protocol 1)"}
    v1 = encode(orjson.dumps(refusal) + b"\n")
    assert decoded([v1]) == [(refusal, b"")]


@pytest.mark.parametrize(
    "data",
    [
        b"no greeting at all, just bytes",
        encode(b"no header line"),
        encode(b"[1,2]\n{}"),
        encode(b"not json\n{}"),
        link.greeting({"k": "hello"}) + struct.pack("<II", 3, 0) + b"[1]",
        link.greeting({"k": "hello"}) + struct.pack("<II", 1 << 21, 0),
        b"Content-Length: " + b"9" * 80,
    ],
)
def test_a_malformed_stream_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decoded([data])


class Outlives:
    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def outlives(self, method: str) -> bool:
        return method.startswith("terminal/")

    def cancel_key(self, key: str) -> None:
        self.cancelled.append(key)


def test_a_key_a_dead_server_left_running_is_passed_on_when_its_work_outlives_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal"
    with IdempotencyJournal(path) as first:
        first.begin("k-term", "terminal/execute#abc")
        first.begin("k-file", "fs/write#abc")
        first.begin("k-done", "terminal/execute#abc")
        first.finish("k-done", True, b'{"output":"x"}')
    with IdempotencyJournal(path) as journal:  # the next server: rows left running
        elsewhere = Outlives()
        idem = Idempotency(journal, elsewhere)
        assert idem.lookup("k-term", "terminal/execute#abc") is None  # asked again, there
        unknown = idem.lookup("k-file", "fs/write#abc")
        assert isinstance(unknown, tuple)
        assert b"unknown" in unknown[1]
        assert idem.lookup("k-done", "terminal/execute#abc") == (True, b'{"output":"x"}')
        journal.begin("k-term", "terminal/execute#abc")  # begun again over the old row
        journal.finish("k-term", True, b'{"output":"done"}')
        assert idem.lookup("k-term", "terminal/execute#abc") == (True, b'{"output":"done"}')
        with pytest.raises(InvalidParams):  # a key still belongs to its first params
            idem.lookup("k-term", "terminal/execute#other")
        idem.cancel("k-term")
        assert elsewhere.cancelled == ["k-term"]


def test_the_servers_crash_loop_policy_reaches_the_hosts_shells(tmp_path: Path) -> None:
    matrix = DEFAULT_MATRIX.with_row(
        MatrixRow(
            ErrorCategory.TERMINAL,
            ErrorSeverity.CRITICAL,
            Strategy.RECREATE_TERMINAL,
            Strategy.ALERT_USER,
            0,
        )
    )
    policy = CrashLoopPolicy.from_matrix(matrix)
    assert not policy.recreates  # the matrix says: no second run, so no recreation
    assert policy_from_wire(orjson.loads(orjson.dumps(policy_to_wire(policy)))) == policy
    assert policy_from_wire({"max_deaths": "three"}) is None
    assert policy_from_wire({"remedy": "nonsense"}) is None
    assert policy_from_wire("bash") is None

    async def greet() -> CrashLoopPolicy | None:
        places = host_places(tmp_path / "state", tmp_path / "ws")
        host = TerminalHost(places, workspace=tmp_path / "ws", state_dir=tmp_path / "state")
        greeting = hello(
            workspace=tmp_path / "ws",
            shell=None,
            max_message_bytes=1 << 20,
            features={},
            crash_policy=policy,
        )
        lk = host.new_link()
        host.received(lk, orjson.loads(orjson.dumps(greeting)), b"")
        assert lk.welcomed
        return host.service.crash_policy

    (tmp_path / "ws").mkdir()
    assert asyncio.run(greet()) == policy
