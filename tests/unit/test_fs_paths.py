"""Workspace confinement against real folders and symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lapce_bridge.core.errors import InvalidParams, PermissionDenied
from lapce_bridge.fs.paths import Workspace


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Workspace, Path, Path]:
    root = tmp_path / "ws"
    outside = tmp_path / "outside"
    (root / "src").mkdir(parents=True)
    outside.mkdir()
    (root / "src" / "a.txt").write_text("a")
    (outside / "secret").write_text("s")
    return Workspace(root), root.resolve(), outside.resolve()


def test_relative_and_absolute_inside(tree: tuple[Workspace, Path, Path]) -> None:
    ws, root, _ = tree
    assert ws.resolve("src/a.txt") == str(root / "src" / "a.txt")
    assert ws.resolve(str(root / "src" / "a.txt")) == str(root / "src" / "a.txt")
    assert ws.resolve(".") == str(root)
    assert ws.resolve("src/../src/./a.txt") == str(root / "src" / "a.txt")


def test_a_missing_target_inside_is_allowed(tree: tuple[Workspace, Path, Path]) -> None:
    ws, root, _ = tree
    assert ws.resolve("new/dir/file.txt") == str(root / "new" / "dir" / "file.txt")


@pytest.mark.parametrize("escape", ["..", "../outside/secret", "src/../../outside", "/etc/passwd"])
def test_escapes_are_refused(tree: tuple[Workspace, Path, Path], escape: str) -> None:
    ws, _, _ = tree
    with pytest.raises(PermissionDenied) as info:
        ws.resolve(escape)
    assert info.value.code == -32006
    assert "outside the workspace" in info.value.detail


def test_symlink_leading_outside_is_refused(tree: tuple[Workspace, Path, Path]) -> None:
    ws, root, outside = tree
    (root / "link").symlink_to(outside / "secret")
    (root / "dirlink").symlink_to(outside)
    for raw in ("link", "dirlink/secret", "dirlink/new-file-for-a-write", "dirlink"):
        with pytest.raises(PermissionDenied):
            ws.resolve(raw)


def test_dangling_symlink_out_is_refused(tree: tuple[Workspace, Path, Path]) -> None:
    ws, root, outside = tree
    (root / "dangling").symlink_to(outside / "not-there-yet")
    with pytest.raises(PermissionDenied):
        ws.resolve("dangling")


def test_dotdot_after_an_inner_symlink_follows_the_link_first(
    tree: tuple[Workspace, Path, Path],
) -> None:
    ws, root, outside = tree
    deep = outside / "deep"
    deep.mkdir()
    (root / "hop").symlink_to(deep)
    # Lexically "hop/.." is the root; physically it is `outside`: the kernel's reading wins.
    with pytest.raises(PermissionDenied):
        ws.resolve("hop/../secret")


def test_symlink_inside_resolves_to_its_target(tree: tuple[Workspace, Path, Path]) -> None:
    ws, root, _ = tree
    (root / "alias").symlink_to(root / "src")
    assert ws.resolve("alias/a.txt") == str(root / "src" / "a.txt")


def test_workspace_given_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real)
    ws = Workspace(tmp_path / "via")
    assert ws.root == str(real.resolve())
    assert ws.resolve("x") == str(real.resolve() / "x")


def test_sibling_with_a_common_prefix_is_outside(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws2").mkdir()
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(PermissionDenied):
        ws.resolve(str(tmp_path / "ws2" / "f"))


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["a"], "", "a\0b"])
def test_bad_paths_are_invalid_params(tree: tuple[Workspace, Path, Path], bad: object) -> None:
    ws, _, _ = tree
    with pytest.raises(InvalidParams) as info:
        ws.resolve(bad)
    assert info.value.code == -32602


def test_relative_is_posix_and_root_is_dot(tree: tuple[Workspace, Path, Path]) -> None:
    ws, root, _ = tree
    assert ws.relative(str(root)) == "."
    assert ws.relative(str(root / "src" / "a.txt")) == "src/a.txt"


def test_remembered_only_after_a_successful_resolve(tree: tuple[Workspace, Path, Path]) -> None:
    ws, root, _ = tree
    assert ws.remembered("src/a.txt") is None
    ws.resolve("src/a.txt")
    assert ws.remembered("src/a.txt") == str(root / "src" / "a.txt")
    with pytest.raises(PermissionDenied):
        ws.resolve("../outside/secret")
    assert ws.remembered("../outside/secret") is None


def test_memo_is_bounded(tree: tuple[Workspace, Path, Path]) -> None:
    ws, _, _ = tree
    ws.memo_limit = 3
    for i in range(10):
        ws.resolve(f"f{i}")
    assert sum(ws.remembered(f"f{i}") is not None for i in range(10)) <= 3


def test_workspace_must_be_a_folder(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(InvalidParams):
        Workspace(f)
    with pytest.raises(InvalidParams):
        Workspace(tmp_path / "missing")


def test_symlink_loop_stays_inside_and_does_not_hang(tree: tuple[Workspace, Path, Path]) -> None:
    ws, root, _ = tree
    os.symlink(root / "loop2", root / "loop1")
    os.symlink(root / "loop1", root / "loop2")
    resolved = ws.resolve("loop1")
    assert resolved.startswith(str(root))


def test_only_plain_paths_are_remembered(tree: tuple[Workspace, Path, Path]) -> None:
    ws, root, _ = tree
    (root / "alias").symlink_to(root / "src")
    ws.resolve("alias/a.txt")
    ws.resolve("src/../src/a.txt")
    ws.resolve("./src/a.txt")
    assert ws.remembered("alias/a.txt") is None  # through a symlink: resolved every time
    assert ws.remembered("src/../src/a.txt") is None
    assert ws.remembered("./src/a.txt") == str(root / "src" / "a.txt")
