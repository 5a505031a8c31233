"""The numbered, resumable output streams (`terminal/stream`): seq, ring bounds, resume."""

from __future__ import annotations

from typing import Any

import pytest

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.terminal.stream import OutputStreams, Stream


class Inbox:
    def __init__(self) -> None:
        self.notes: list[tuple[str, Any]] = []

    def __call__(self, method: str, params: Any) -> None:
        self.notes.append((method, params))

    def data(self) -> list[dict[str, Any]]:
        return [p for m, p in self.notes if m == "terminal/data"]


def _send(streams: OutputStreams, stream: Stream, text: str) -> None:
    streams.send(stream, text, len(text.encode()))


def test_each_notification_is_numbered_with_its_offset() -> None:
    streams = OutputStreams()
    inbox = Inbox()
    stream = streams.open(inbox)
    streams.name(stream, "t1-1-aa")
    for text in ("ab", "é\n", "xyz"):
        _send(streams, stream, text)
    assert [(d["seq"], d["offset"], d["data"]) for d in inbox.data()] == [
        (1, 0, "ab"),
        (2, 2, "é\n"),
        (3, 5, "xyz"),
    ]
    assert {d["executionId"] for d in inbox.data()} == {"t1-1-aa"}


def test_resume_replays_what_was_missed_and_moves_the_stream() -> None:
    streams = OutputStreams()
    old, new = Inbox(), Inbox()
    stream = streams.open(old, key="k1", terminal_id="t1")
    streams.name(stream, "e1")
    for i in range(5):
        _send(streams, stream, f"line{i}\n")
    answer = streams.resume([{"executionId": "e1", "seq": 2}], new)
    assert answer == [
        {
            "executionId": "e1",
            "terminalId": "t1",
            "lastSeq": 5,
            "finished": False,
            "idempotencyKey": "k1",
            "replayed": 3,
        }
    ]
    assert [d["seq"] for d in new.data()] == [3, 4, 5]
    _send(streams, stream, "later\n")
    assert [d["seq"] for d in new.data()] == [3, 4, 5, 6]
    assert len(old.data()) == 5  # the old connection hears nothing more
    streams.finish(stream, "terminal/commandFinished", {"executionId": "e1", "exitCode": 0})
    assert new.notes[-1] == ("terminal/commandFinished", {"executionId": "e1", "exitCode": 0})


def test_resume_by_key_before_any_output() -> None:
    streams = OutputStreams()
    old, new = Inbox(), Inbox()
    stream = streams.open(old, key="k2")
    answer = streams.resume([{"idempotencyKey": "k2", "seq": 0}], new)
    assert answer[0]["lastSeq"] == 0
    assert answer[0]["replayed"] == 0
    assert "overflow" not in answer[0]
    streams.name(stream, "e2")
    _send(streams, stream, "x")
    assert new.data() == [{"executionId": "e2", "data": "x", "seq": 1, "offset": 0}]
    assert streams.resume([{"idempotencyKey": "nope", "seq": 0}], new) == [
        {"idempotencyKey": "nope", "unknown": True}
    ]


def test_past_the_ring_the_answer_names_the_bytes_to_read() -> None:
    streams = OutputStreams(ring_bytes=10)
    inbox, new = Inbox(), Inbox()
    stream = streams.open(inbox)
    streams.name(stream, "e3")
    for i in range(6):
        _send(streams, stream, f"{i}abc")  # 4 bytes each: the ring keeps the last 2
    [answer] = streams.resume([{"executionId": "e3", "seq": 1, "offset": 4}], new)
    assert answer["overflow"] == {"fromSeq": 2, "toSeq": 4, "offset": 4, "end": 16}
    assert [(d["seq"], d["offset"]) for d in new.data()] == [(5, 16), (6, 20)]
    # What a client assembles: its own 4 bytes, the range read from the spool, the replay.
    whole = "".join(d["data"] for d in inbox.data())
    assert whole[:4] + whole[4:16] + "".join(d["data"] for d in new.data()) == whole


def test_overflow_when_nothing_is_left_in_the_ring() -> None:
    streams = OutputStreams(ring_bytes=0)
    stream = streams.open(Inbox())
    streams.name(stream, "e4")
    _send(streams, stream, "abc")
    _send(streams, stream, "de")
    [answer] = streams.resume([{"executionId": "e4", "seq": 0}], Inbox())
    assert answer["overflow"] == {"fromSeq": 1, "toSeq": 2, "offset": 0, "end": 5}
    assert answer["replayed"] == 0


def test_the_rings_together_stay_within_max_bytes_oldest_stream_first() -> None:
    streams = OutputStreams(ring_bytes=100, max_bytes=150)
    a = streams.open(Inbox())
    streams.name(a, "a")
    b = streams.open(Inbox())
    streams.name(b, "b")
    for _ in range(10):
        _send(streams, a, "x" * 10)
    for _ in range(10):
        _send(streams, b, "y" * 10)
    stats = streams.statistics()
    assert stats.ring_bytes <= 150
    assert b.ring_bytes == 100  # the stream active last keeps its whole ring
    assert a.ring_bytes == 50
    assert stats.evicted_bytes == 200 - 150


def test_finished_streams_are_forgotten_past_max_streams() -> None:
    streams = OutputStreams(max_streams=2)
    made = []
    for name in ("a", "b", "c"):
        s = streams.open(Inbox(), key=f"key-{name}")
        streams.name(s, name)
        _send(streams, s, "z")
        streams.finish(s, "terminal/commandFinished", {})
        made.append(s)
    assert streams.statistics().streams == 2
    assert streams.resume([{"executionId": "a", "seq": 0}], Inbox()) == [
        {"executionId": "a", "unknown": True}
    ]
    assert streams.resume([{"idempotencyKey": "key-a", "seq": 0}], Inbox()) == [
        {"idempotencyKey": "key-a", "unknown": True}
    ]
    assert streams.statistics().ring_bytes == 2


@pytest.mark.parametrize(
    "wanted",
    [
        "x",
        [{"seq": 1}],
        [{"executionId": "e", "seq": -1}],
        [{"executionId": "e", "seq": 9}],
        [1],
    ],
)
def test_bad_resume_requests_are_refused(wanted: Any) -> None:
    streams = OutputStreams()
    stream = streams.open(Inbox())
    streams.name(stream, "e")
    with pytest.raises(InvalidParams):
        streams.resume(wanted, Inbox())
