"""Snapshots of real trees, their diffs, and reconciling reported paths against them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lapce_bridge.fs.snapshot import Reconciler, Scope, diff, scan


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "m.py").write_text("x = 1")
    (root / "README").write_text("hi")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    (root / ".lapce-bridge-1-aaaaaaaaaaaa.tmp").write_text("temp")
    return root


def rel(root: Path, changes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(os.path.relpath(p, root), kind) for p, kind in changes]


def test_scan_covers_the_tree_but_not_skipped_dirs_or_temps(tree: Path) -> None:
    snap, truncated = scan(Scope((str(tree),)))
    assert not truncated
    assert sorted(os.path.relpath(p, tree) for p in snap) == [
        ".", "README", "src", "src/pkg", "src/pkg/m.py"
    ]  # fmt: skip
    assert snap[str(tree / "README")][4] == "file"
    assert snap[str(tree / "src")][4] == "directory"


def test_scan_non_recursive_and_truncated(tree: Path) -> None:
    snap, _ = scan(Scope((str(tree),), recursive=False))
    assert sorted(os.path.relpath(p, tree) for p in snap) == [".", "README", "src"]
    small, truncated = scan(Scope((str(tree),)), max_entries=2)
    assert truncated
    assert len(small) == 2


def test_scan_records_symlinks_without_following_them(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    (tree / "out").symlink_to(outside)
    snap, _ = scan(Scope((str(tree),)))
    assert snap[str(tree / "out")][4] == "symlink"
    assert not any(p.startswith(str(tree / "out") + os.sep) for p in snap)


def test_diff_reports_added_modified_deleted(tree: Path) -> None:
    scope = Scope((str(tree),))
    before, _ = scan(scope)
    (tree / "README").write_text("longer now")
    (tree / "src" / "pkg" / "m.py").unlink()
    (tree / "src" / "new.py").write_text("")
    (tree / "docs").mkdir()
    after, _ = scan(scope)
    assert rel(tree, diff(before, after)) == [
        ("README", "modified"),
        ("docs", "added"),
        ("src/new.py", "added"),
        ("src/pkg/m.py", "deleted"),
    ]


def test_diff_of_a_file_turned_folder() -> None:
    f = (0, 0, 1, 1, "file")
    d = (0, 0, 0, 0, "directory")
    assert diff({"/r/x": f}, {"/r/x": d}) == [("/r/x", "modified")]
    assert diff({"/r/x": d}, {"/r/x": d}) == []


def reconciler(tree: Path, *, recursive: bool = True) -> Reconciler:
    scope = Scope((str(tree),), recursive)
    return Reconciler(scope, scan(scope)[0])


def test_an_atomic_replace_reported_as_added_is_a_modification(tree: Path) -> None:
    rec = reconciler(tree)
    (tree / ".lapce-bridge-2-bbbbbbbbbbbb.tmp").write_text("new")
    os.replace(tree / ".lapce-bridge-2-bbbbbbbbbbbb.tmp", tree / "README")
    reported = [
        (str(tree / ".lapce-bridge-2-bbbbbbbbbbbb.tmp"), False),
        (str(tree / "README"), False),
    ]
    assert rel(tree, rec.apply(reported)) == [("README", "modified")]


def test_a_folder_renamed_away_deletes_everything_below_it(tree: Path, tmp_path: Path) -> None:
    rec = reconciler(tree)
    shutil.move(tree / "src", tmp_path / "elsewhere")
    changes = rel(tree, rec.apply([(str(tree / "src"), False)]))
    assert changes == [("src/pkg/m.py", "deleted"), ("src/pkg", "deleted"), ("src", "deleted")]
    assert not any(p.startswith(str(tree / "src")) for p in rec.snapshot)


def test_a_folder_created_with_content_is_scanned(tree: Path) -> None:
    rec = reconciler(tree)
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "c.txt").write_text("c")
    changes = rel(tree, rec.apply([(str(tree / "a"), False)]))
    assert changes == [("a", "added"), ("a/b", "added"), ("a/b/c.txt", "added")]


def test_a_path_that_came_and_went_is_not_reported(tree: Path) -> None:
    rec = reconciler(tree)
    assert rec.apply([(str(tree / "flash"), False)]) == []


def test_a_modification_with_an_unchanged_stamp_is_trusted(tree: Path) -> None:
    rec = reconciler(tree)
    readme = str(tree / "README")
    assert rec.apply([(readme, False)]) == []
    assert rec.apply([(readme, True)]) == [(readme, "modified")]


def test_paths_outside_the_scope_are_ignored(tree: Path, tmp_path: Path) -> None:
    rec = reconciler(tree, recursive=False)
    (tree / "src" / "deep.txt").write_text("d")
    (tree / ".git" / "index").write_text("i")
    (tmp_path / "sibling").write_text("s")
    reported = [
        (str(tree / "src" / "deep.txt"), False),  # below the first level
        (str(tree / ".git" / "index"), False),  # a skipped folder
        (str(tmp_path / "sibling"), False),  # not under the root
    ]
    assert rec.apply(reported) == []


def test_a_file_replaced_by_a_folder_and_back(tree: Path) -> None:
    rec = reconciler(tree)
    readme = tree / "README"
    readme.unlink()
    readme.mkdir()
    (readme / "inner").write_text("i")
    assert rel(tree, rec.apply([(str(readme), False)])) == [
        ("README", "modified"),
        ("README/inner", "added"),
    ]
    shutil.rmtree(readme)
    readme.write_text("file again")
    assert rel(tree, rec.apply([(str(readme), False)])) == [
        ("README/inner", "deleted"),
        ("README", "deleted"),
        ("README", "added"),
    ]


def test_root_removed_reports_everything_deleted(tree: Path) -> None:
    rec = reconciler(tree)
    shutil.rmtree(tree)
    changes = rec.apply([(str(tree), False)])
    assert len(changes) == 5
    assert all(kind == "deleted" for _, kind in changes)
    assert rec.snapshot == {}
