"""fs/stat's remembered-path shortcut: verified by what the kernel opened, never leaking out."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.core.errors import BridgeError, PermissionDenied
from lapce_bridge.fs.listing import FAST_STAT, stat_path
from lapce_bridge.fs.paths import Workspace
from lapce_bridge.testing.faultfs import Fault, FaultyFs

pytestmark = pytest.mark.skipif(not FAST_STAT, reason="needs O_PATH and /proc/self/fd")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path.resolve() / "ws"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hi')\n")
    outside = tmp_path.resolve() / "outside"
    outside.mkdir()
    (outside / "main.py").write_text("a secret of another size\n")
    return root


def expected(path: Path, kind: str) -> dict[str, Any]:
    st = os.lstat(path)
    return {"size": st.st_size if kind == "file" else 0, "mtimeNs": st.st_mtime_ns, "kind": kind}


def test_a_second_stat_skips_the_resolve_and_agrees_with_the_first(ws: Path) -> None:
    fs = FaultyFs()
    workspace = Workspace(ws)
    first = stat_path(workspace, "src/main.py", ops=fs)
    assert fs.count("lstat") == 1
    assert fs.count("open") == 1  # the full path opens beneath the root, then fstats
    second = stat_path(workspace, "src/main.py", ops=fs)
    assert first == second == expected(ws / "src" / "main.py", "file")
    assert fs.count("lstat") == 1  # the shortcut: open + fstat + close, no lstat
    assert fs.outcomes("open") == ["ok", "ok"]
    assert fs.outcomes("close") == ["ok", "ok"]
    assert stat_path(workspace, "src", ops=fs) == expected(ws / "src", "directory")
    assert stat_path(workspace, "src", ops=fs) == expected(ws / "src", "directory")


def test_the_shortcut_sees_a_rewrite_at_once(ws: Path) -> None:
    workspace = Workspace(ws)
    stat_path(workspace, "src/main.py")
    (ws / "src" / "main.py").write_text("longer content than before\n")
    os.utime(ws / "src" / "main.py", ns=(1, 123_456_789))
    assert stat_path(workspace, "src/main.py") == {
        "size": 27,
        "mtimeNs": 123_456_789,
        "kind": "file",
    }


def test_a_parent_swapped_for_a_link_out_is_refused_not_leaked(ws: Path) -> None:
    workspace = Workspace(ws)
    stat_path(workspace, "src/main.py")
    shutil.rmtree(ws / "src")
    (ws / "src").symlink_to(ws.parent / "outside")
    with pytest.raises(PermissionDenied) as info:
        stat_path(workspace, "src/main.py")
    assert info.value.code == -32006
    assert "outside the workspace" in str(info.value)


def test_the_last_component_swapped_for_a_link(ws: Path) -> None:
    workspace = Workspace(ws)
    target = ws / "src" / "main.py"
    stat_path(workspace, "src/main.py")
    (ws / "real.py").write_text("x")
    target.unlink()
    target.symlink_to(ws / "real.py")
    found = stat_path(workspace, "src/main.py")
    assert (found["kind"], found["targetKind"], found["size"]) == ("symlink", "file", 1)
    target.unlink()
    target.symlink_to(ws.parent / "outside" / "main.py")
    with pytest.raises(PermissionDenied):
        stat_path(workspace, "src/main.py")


def test_a_removed_path_fails_classified_and_a_new_one_is_seen(ws: Path) -> None:
    workspace = Workspace(ws)
    stat_path(workspace, "src/main.py")
    (ws / "src" / "main.py").unlink()
    with pytest.raises(BridgeError) as info:
        stat_path(workspace, "src/main.py")
    assert (info.value.code, info.value.to_wire()["errno"]) == (-32004, "ENOENT")
    assert not info.value.classification.retryable
    (ws / "src" / "main.py").mkdir()
    assert stat_path(workspace, "src/main.py") == expected(ws / "src" / "main.py", "directory")


@pytest.mark.parametrize("op", ["open", "fstat"])
def test_a_failing_shortcut_falls_back_to_the_full_path(ws: Path, op: str) -> None:
    fs = FaultyFs()
    workspace = Workspace(ws)
    stat_path(workspace, "src/main.py", ops=fs)
    fs.add(Fault(op, errno.EIO))
    assert stat_path(workspace, "src/main.py", ops=fs) == expected(ws / "src" / "main.py", "file")
    assert fs.count(op, "EIO") == 1
    assert fs.count("lstat") == 2  # the full path ran again
    assert fs.count("close") == fs.count("open", "ok")  # no descriptor left open


def test_a_failing_close_of_the_shortcut_is_harmless(ws: Path) -> None:
    fs = FaultyFs()
    workspace = Workspace(ws)
    stat_path(workspace, "src", ops=fs)
    fs.add(Fault("close", errno.EIO))
    assert stat_path(workspace, "src", ops=fs)["kind"] == "directory"
    assert fs.outcomes("close") == ["ok", "EIO"]  # the first stat's, then the shortcut's


def test_a_fifo_is_stat_ed_without_blocking(ws: Path) -> None:
    os.mkfifo(ws / "fifo")
    workspace = Workspace(ws)
    assert stat_path(workspace, "fifo")["kind"] == "other"
    assert stat_path(workspace, "fifo") == expected(ws / "fifo", "other")
