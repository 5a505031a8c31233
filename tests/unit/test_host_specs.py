"""The host's spec file: written on change, off the loop, never older than the newest."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from lapce_bridge.host.specs import EMPTY, SpecWriter


def private_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    return folder


def test_a_write_happens_only_when_the_specs_changed(tmp_path: Path) -> None:
    state: dict[str, Any] = {"terminals": [{"terminalId": "t1"}], "spools": {}}
    path = private_folder(tmp_path) / "terminals.json"
    writer = SpecWriter(path, lambda: state)
    assert writer.write() is True
    assert writer.write() is False
    state["terminals"].append({"terminalId": "t2"})
    assert writer.write() is True
    assert writer.writes == 2
    assert orjson.loads(path.read_bytes()) == state
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_periodic_snapshot_in_flight_never_replaces_a_newer_write(tmp_path: Path) -> None:
    # The periodic write takes its snapshot on the loop and writes it in a thread; a clean
    # stop's `write(EMPTY)` can land in between, and the older snapshot must not undo it.
    path = private_folder(tmp_path) / "terminals.json"
    writer = SpecWriter(path, lambda: {"terminals": [{"terminalId": "t1"}], "spools": {}})
    in_flight = writer._take(None)
    assert in_flight is not None
    assert writer.write(EMPTY) is True
    assert writer._put(*in_flight) is False
    assert orjson.loads(path.read_bytes()) == EMPTY


def test_the_periodic_write_runs_off_the_loop_and_retries_after_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "state"
    folder.write_text("a file where the folder goes: the first turn's write fails")
    path = folder / "terminals.json"
    state = {"terminals": [{"terminalId": "t1"}], "spools": {}}
    writer = SpecWriter(path, lambda: state)
    writers: list[int] = []
    real_put = writer._put

    def put(number: int, data: bytes) -> bool:
        writers.append(threading.get_ident())
        return real_put(number, data)

    writer._put = put  # type: ignore[method-assign]

    async def scenario() -> None:
        turns = 0

        async def sleep(_: float) -> None:
            nonlocal turns
            turns += 1
            if turns == 2:
                folder.unlink()
                folder.mkdir(mode=0o700)
            if turns == 3:
                raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            await writer.run(0.5, sleep)

    loop_thread = threading.get_ident()
    asyncio.run(scenario())
    assert "could not write the terminal specs" in caplog.text
    assert orjson.loads(path.read_bytes()) == state  # the same specs, written on the retry
    assert len(writers) == 2
    assert loop_thread not in writers
    assert os.listdir(folder) == ["terminals.json"]  # no temporary file left behind
