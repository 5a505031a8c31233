"""The idempotency journal's logs on disk: a writer killed with SIGKILL, a record cut short,
a second process beside a live writer, pruning that rewrites, a dead writer's log adopted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from lapce_bridge.ipc.journal import EntryState, IdempotencyJournal, read_keys


def logs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.name.endswith(".log"))


def killed_writer(path: Path, script: str) -> None:
    """Run `script` with `journal` open on `path` in a process that then dies by SIGKILL."""
    code = (
        textwrap.dedent(
            f"""
        import os, signal
        from pathlib import Path
        from lapce_bridge.ipc.journal import IdempotencyJournal
        journal = IdempotencyJournal(Path({str(path)!r})).open()
        """
        )
        + textwrap.dedent(script)
        + "\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    assert done.returncode == -signal.SIGKILL


def test_what_a_killed_writer_wrote_is_there_and_its_running_rows_are_unknown(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.journal"
    killed_writer(
        path,
        """
        journal.begin("done", "fs/write#1")
        journal.finish("done", True, b'{"size":3}')
        journal.begin("running", "terminal/execute#2")
        journal.begin("refused", "fs/write#3")
        journal.forget("refused")
        """,
    )
    with IdempotencyJournal(path) as journal:
        done = journal.get("done")
        assert done is not None
        assert (done.method, done.state, done.ok, done.payload) == (
            "fs/write#1", EntryState.DONE, True, b'{"size":3}'
        )  # fmt: skip
        running = journal.get("running")
        assert running is not None
        assert running.state is EntryState.INTERRUPTED
        assert journal.get("refused") is None
        assert journal.statistics().interrupted_at_open == 1
        # The dead writer's log is adopted: pruning may now rewrite and remove it.
        assert len(logs(path)) == 2


def test_a_record_cut_short_is_dropped_with_nothing_before_it(tmp_path: Path) -> None:
    path = tmp_path / "j.journal"
    with IdempotencyJournal(path) as journal:
        journal.begin("a", "m")
        journal.finish("a", True, b'"first"')
        journal.begin("b", "m")
        journal.finish("b", True, b'"second"' * 100)
    (log,) = logs(path)
    size = log.stat().st_size
    for cut in (size - 1, size - 300, size - 805):  # inside the last record, at its start
        os.truncate(log, cut)
        with IdempotencyJournal(path) as journal:
            a = journal.get("a")
            assert a is not None
            assert a.payload == b'"first"'
            b = journal.get("b")
            assert b is None or b.state is EntryState.INTERRUPTED  # its finish was cut
        size = cut
    # A flipped byte fails the record's check the same way.
    data = bytearray(log.read_bytes())
    data[-1] ^= 0xFF
    log.write_bytes(bytes(data))
    with IdempotencyJournal(path) as journal:
        assert journal.get("a") is not None
        journal.begin("c", "m")
        journal.finish("c", True, b'"third"')
    with IdempotencyJournal(path) as journal:
        c = journal.get("c")
        assert c is not None
        assert c.payload == b'"third"'


def test_a_second_process_reads_on_in_a_live_writers_log(tmp_path: Path) -> None:
    path = tmp_path / "j.journal"
    # Two journals on one folder at once, as an old server draining and its successor:
    # each writes its own log; the successor finds the old one's late outcome.
    with IdempotencyJournal(path) as old:
        old.begin("k", "terminal/execute#1")
        with IdempotencyJournal(path) as new:
            seen = new.get("k")
            assert seen is not None
            assert seen.state is EntryState.INTERRUPTED  # running where we cannot see it
            old.finish("k", True, b'{"output":"late"}')
            late = new.get("k")
            assert late is not None
            assert (late.state, late.payload) == (EntryState.DONE, b'{"output":"late"}')
            new.begin("n", "fs/write#1")
            new.finish("n", True, b"{}")
            assert len(logs(path)) == 2
    assert read_keys(path) == {"k", "n"}


def test_pruning_rewrites_the_kept_rows_and_removes_the_old_logs(tmp_path: Path) -> None:
    path = tmp_path / "j.journal"
    killed_writer(path, 'journal.begin("orphan", "fs/write#0")')
    with IdempotencyJournal(path, max_entries=20, max_bytes=1 << 20) as journal:
        journal.begin("running", "terminal/execute#1")
        for i in range(21):
            journal.begin(f"k{i}", "m")
            journal.finish(f"k{i}", i % 2 == 0, f'"{i}"'.encode())
        stats = journal.statistics()
        assert stats.pruned == 11  # past 20 finished rows, the newest 10 are kept
        assert len(logs(path)) == 1  # ours, rewritten; the dead writer's went with it
        kept = {f"k{i}": f'"{i}"'.encode() for i in range(11, 21)}
    with IdempotencyJournal(path) as journal:
        for key, payload in kept.items():
            entry = journal.get(key)
            assert entry is not None
            assert (entry.payload, entry.ok) == (payload, int(key[1:]) % 2 == 0)
        assert journal.get("k10") is None
        running = journal.get("running")
        orphan = journal.get("orphan")
        assert running is not None
        assert orphan is not None
        assert running.state is orphan.state is EntryState.INTERRUPTED
        assert journal.statistics().entries == 12


def test_the_sqlite_journal_of_an_earlier_version_is_taken_over(tmp_path: Path) -> None:
    import sqlite3

    legacy = tmp_path / "idempotency-abc.sqlite3"
    db = sqlite3.connect(legacy, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,"
        " method TEXT NOT NULL, state TEXT NOT NULL, ok INTEGER NOT NULL DEFAULT 0,"
        " payload BLOB NOT NULL DEFAULT x'')"
    )
    db.executemany(
        "INSERT INTO entries (key, method, state, ok, payload) VALUES (?, ?, ?, ?, ?)",
        [
            ("done", "fs/write#1", "done", 1, b'{"size":3}'),
            ("failed", "fs/edit#2", "done", 0, b'{"code":-32004}'),
            ("running", "terminal/execute#3", "running", 0, b""),
        ],
    )
    db.close()
    path = tmp_path / "idempotency-abc.journal"
    for _ in range(2):  # taken over once; the next open finds the rows in the log
        with IdempotencyJournal(path) as journal:
            done = journal.get("done")
            failed = journal.get("failed")
            running = journal.get("running")
            assert done is not None
            assert failed is not None
            assert running is not None
            assert (done.ok, done.payload, done.method) == (True, b'{"size":3}', "fs/write#1")
            assert (failed.ok, failed.payload) == (False, b'{"code":-32004}')
            assert running.state is EntryState.INTERRUPTED
        assert not legacy.exists()


def test_an_unreadable_earlier_journal_is_left_and_does_not_stop_the_start(
    tmp_path: Path,
) -> None:
    legacy = tmp_path / "idempotency-abc.sqlite3"
    legacy.write_bytes(b"not a database at all" * 100)
    with IdempotencyJournal(tmp_path / "idempotency-abc.journal") as journal:
        journal.begin("k", "m")
        assert journal.get("k") is not None
    assert legacy.exists()
    # A journal whose own name ends in .sqlite3 is not taken for an earlier one.
    with IdempotencyJournal(tmp_path / "j.sqlite3") as journal:
        journal.begin("k", "m")
    with IdempotencyJournal(tmp_path / "j.sqlite3") as journal:
        assert journal.get("k") is not None


def test_rows_of_a_live_writer_are_not_pruned_nor_make_every_finish_prune(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.journal"
    with IdempotencyJournal(path, max_entries=10) as old:
        for i in range(10):  # the bound's worth of finished rows, in a log that stays live
            old.begin(f"old{i}", "m")
            old.finish(f"old{i}", True, b"1")
        with IdempotencyJournal(path, max_entries=10) as new:
            rewrites = []
            real_prune = new._prune

            def counted() -> None:
                rewrites.append(1)
                real_prune()

            new._prune = counted  # type: ignore[method-assign]
            for i in range(20):
                new.begin(f"new{i}", "m")
                new.finish(f"new{i}", True, b"2")
            assert all(new.get(f"old{i}") is not None for i in range(10))  # not ours to prune
            assert new.get("new19") is not None
            assert new.get("new0") is None  # ours were pruned
            assert len(rewrites) <= 4  # not once per finish past the bound
