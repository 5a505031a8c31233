"""A text read that JSON escaping would push over the message limit is refused, not sent."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from lapce_bridge.core.errors import FileTooLarge
from lapce_bridge.fs.service import ENVELOPE_BYTES, FileService, json_text_bytes
from lapce_bridge.testing import FakeClock

LIMIT = 64 * 1024


class Ctx:
    connection_id = 1
    received_at = 0.0

    def notify(self, method: str, params: Any) -> None:
        raise AssertionError("no notification expected")

    def on_close(self, callback: Any) -> None:
        raise AssertionError("no watch expected")


@pytest.mark.parametrize(
    "data",
    [b"", b"plain", b'"\\', bytes(range(0x20)), "é漢字🙂".encode(), b'a\x00b\n\t\x1f"\\z' * 50],
)
def test_the_estimate_bounds_what_the_encoder_writes(data: bytes) -> None:
    assert len(orjson.dumps(data.decode("utf-8"))) <= json_text_bytes(data)


def test_the_estimate_bounds_random_text() -> None:
    rng = random.Random(633)
    alphabet = [chr(c) for c in range(0x80)] + ["é", "€", "漢", "🙂"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 300)))
        data = text.encode("utf-8")
        assert len(orjson.dumps(text)) <= json_text_bytes(data)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path.resolve()
    size = LIMIT // 2
    (root / "quotes.json").write_bytes(b'"' * size)  # doubles: 64 KiB + quotes, over
    (root / "controls.bin.txt").write_bytes(b"\x01" * (LIMIT // 4))  # six-fold
    (root / "plain.txt").write_bytes(b"p" * (LIMIT - ENVELOPE_BYTES - 2))  # exactly fits
    return root


async def read(svc: FileService, path: str, encoding: str = "utf-8") -> Any:
    return await svc.methods()["fs/read"].handler({"path": path, "encoding": encoding}, Ctx())


@pytest.mark.parametrize("name", ["quotes.json", "controls.bin.txt"])
async def test_escape_heavy_text_is_refused_with_base64_suggested(ws: Path, name: str) -> None:
    svc = FileService(
        workspace=ws, clock=FakeClock(autojump=True), max_message_bytes=LIMIT, racy_window_ns=0
    )
    for _ in range(2):  # from disk, then from the cache: refused both times
        with pytest.raises(FileTooLarge) as info:
            await read(svc, name)
        assert info.value.code == -32004
        assert "base64" in str(info.value)
        assert info.value.to_wire()["limit"] == LIMIT
    answer = await read(svc, name, "base64")
    assert len(orjson.dumps(answer)) < LIMIT
    assert answer["size"] == (ws / name).stat().st_size


async def test_text_that_fits_is_sent_and_fits(ws: Path) -> None:
    svc = FileService(workspace=ws, clock=FakeClock(autojump=True), max_message_bytes=LIMIT)
    answer = await read(svc, "plain.txt")
    assert answer["content"] == (ws / "plain.txt").read_text()
    body = orjson.dumps({"jsonrpc": "2.0", "id": 2**31, "result": answer})
    assert len(body) <= LIMIT
