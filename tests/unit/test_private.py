"""Private folders and files: what `lapce_bridge.private` creates, accepts and refuses."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from lapce_bridge.private import (
    NotPrivate,
    create_private_file,
    open_private_dir,
    open_private_file,
    private_dir,
    private_file,
    write_private_file,
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_missing_folders_are_created_0700_even_under_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        made = private_dir(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    assert made == tmp_path / "a" / "b" / "c"
    for folder in (tmp_path / "a", tmp_path / "a" / "b", made):
        assert mode_of(folder) == 0o700
    fd = open_private_dir(made, create=False)
    try:
        assert os.path.samestat(os.fstat(fd), made.stat())
    finally:
        os.close(fd)


def test_a_loose_existing_folder_is_refused_unchanged_unless_it_is_ours_to_repair(
    tmp_path: Path,
) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o1777)
    with pytest.raises(NotPrivate, match="chmod 700"):
        private_dir(loose)
    assert mode_of(loose) == 0o1777  # neither chmodded nor stripped of its sticky bit
    private_dir(loose, repair=True)
    assert mode_of(loose) == 0o700


def test_without_create_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        private_dir(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


def test_the_folder_itself_may_not_be_a_symlink_nor_a_file(tmp_path: Path) -> None:
    real = private_dir(tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(NotPrivate, match="symlink"):
        private_dir(tmp_path / "link")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotPrivate, match="not a folder"):
        private_dir(tmp_path / "file")
    with pytest.raises(NotPrivate, match="not a folder"):
        private_dir(tmp_path / "file" / "below")


def test_an_ancestor_link_of_ours_is_followed_to_a_real_folder(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "via").symlink_to(target)
    made = private_dir(tmp_path / "via" / "app")
    assert (target / "app").is_dir()
    assert mode_of(target / "app") == 0o700
    assert made == tmp_path / "via" / "app"
    (tmp_path / "rel").symlink_to("target")  # a relative link resolves from its own folder
    private_dir(tmp_path / "rel" / "app", create=False)


def test_an_ancestor_others_can_rename_in_is_refused(tmp_path: Path) -> None:
    open_room = tmp_path / "open"
    open_room.mkdir()
    os.chmod(open_room, 0o777)  # world-writable, not sticky: anyone may swap our folder
    with pytest.raises(NotPrivate, match="not sticky"):
        private_dir(open_room / "app")
    os.chmod(open_room, 0o1777)  # sticky (as /tmp): only an entry's owner may rename it
    assert mode_of(private_dir(open_room / "app")) == 0o700


def test_shared_accepts_a_safe_folder_without_touching_it(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    private_dir(shared, shared=True)
    assert mode_of(shared) == 0o1777
    os.chmod(shared, 0o777)
    with pytest.raises(NotPrivate):
        private_dir(shared, shared=True)


def test_a_symlink_loop_on_the_way_ends_in_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(NotPrivate, match="symlinks on the way"):
        private_dir(tmp_path / "a" / "app")


def test_new_files_are_0600_and_never_through_a_symlink(tmp_path: Path) -> None:
    folder = private_dir(tmp_path / "p")
    fd = create_private_file(folder / "new")
    os.write(fd, b"secret")
    os.close(fd)
    assert mode_of(folder / "new") == 0o600
    (folder / "trap").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        create_private_file(folder / "trap")
    assert not (tmp_path / "elsewhere").exists()


def test_an_existing_file_is_checked_through_its_descriptor(tmp_path: Path) -> None:
    folder = private_dir(tmp_path / "p")
    good = folder / "good"
    good.write_bytes(b"ok")
    os.chmod(good, 0o600)
    fd = open_private_file(good)
    try:
        assert os.read(fd, 10) == b"ok"
        assert os.get_blocking(fd)  # blocking mode restored for the caller
    finally:
        os.close(fd)
    os.chmod(good, 0o644)
    with pytest.raises(NotPrivate, match="mode 644"):
        open_private_file(good)
    (folder / "link").symlink_to(good)
    with pytest.raises(NotPrivate, match="symlink"):
        open_private_file(folder / "link")


@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_WRONLY, os.O_RDWR])
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, flags: int) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            open_private_file(fifo, flags)
        except BaseException as exc:  # reported to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # unblock it before failing, so no thread is left hanging
        os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
        pytest.fail("open_private_file blocked on a FIFO")
    assert len(outcome) == 1
    assert isinstance(outcome[0], NotPrivate)
    assert "not a regular file" in str(outcome[0])


def test_private_file_prepares_a_file_another_library_opens(tmp_path: Path) -> None:
    path = private_file(tmp_path / "state" / "db.sqlite3")
    assert path.read_bytes() == b""
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    os.chmod(path, 0o644)
    with pytest.raises(NotPrivate):
        private_file(path)


def test_write_private_file_replaces_atomically_inside_the_folder(tmp_path: Path) -> None:
    folder = private_dir(tmp_path / "p")
    fd = open_private_dir(folder)
    try:
        write_private_file(fd, "cmd", b"one")
        write_private_file(fd, "cmd", b"two")
    finally:
        os.close(fd)
    assert (folder / "cmd").read_bytes() == b"two"
    assert mode_of(folder / "cmd") == 0o600
    assert sorted(os.listdir(folder)) == ["cmd"]  # no temporary file left behind
