"""Opening a path beneath a folder descriptor in one step, so no symlink swapped in leads out.

Theory of operation: a check of a path followed by an open of it is a race: between the two,
a local process can replace a folder on the way with a symlink to `/`. `open_beneath(dir_fd,
rel, flags, mode)` resolves and opens `rel` relative to `dir_fd` as one step, and the kernel
(or our walk) refuses any resolution that would leave the folder:

- Where the kernel has it (Linux 5.6+), `openat2(2)` with `RESOLVE_BENEATH |
  RESOLVE_NO_MAGICLINKS`: `..` above `dir_fd`, an absolute path or an absolute symlink fail
  with EXDEV, a `/proc` magic link with ELOOP; symlinks that stay beneath are followed.
  Python has no binding, so it is called through `ctypes` (syscall 437, the same number on
  every architecture of the generic syscall table).
- Elsewhere (older kernels, seccomp filters that refuse the call), a walk by descriptor:
  each folder on the way is opened with `O_PATH | O_DIRECTORY | O_NOFOLLOW` relative to the
  one before, the last component with `O_NOFOLLOW`. It follows no symlink at all: callers
  pass a path that `realpath` found free of symlinks, so meeting one means it was swapped in
  since, and the walk reports EXDEV, as `openat2` does for an escape.

Invariant (both ways): the descriptor returned names an object beneath `dir_fd`, or the call
raises; EXDEV means "resolving this now would leave the folder" and tells the caller to
resolve its path afresh (see `Workspace.open`). `rel` must be relative and hold no `..`
(EXDEV otherwise, on the walk; the kernel checks it itself).
"""

from __future__ import annotations

import errno
import functools
import os
import stat as st_mod
from typing import Any

SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
_WALK_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@functools.cache
def _binding() -> tuple[Any, Any, Any]:
    """ctypes, the `open_how` struct and libc's `syscall`: loaded on the first open, not when
    the server starts (ctypes alone costs a server's start-up several milliseconds)."""
    import ctypes

    class OpenHow(ctypes.Structure):
        _fields_ = [
            ("flags", ctypes.c_uint64),
            ("mode", ctypes.c_uint64),
            ("resolve", ctypes.c_uint64),
        ]

    syscall = ctypes.CDLL(None, use_errno=True).syscall
    syscall.restype = ctypes.c_long
    return ctypes, OpenHow, syscall


def openat2(dir_fd: int, rel: str, flags: int, mode: int = 0, resolve: int = RESOLVE) -> int:
    """The raw `openat2(2)` call; raises OSError with the kernel's errno."""
    flags |= os.O_CLOEXEC
    # openat2 refuses a mode without O_CREAT/O_TMPFILE (open(2) silently ignores it).
    # (O_TMPFILE includes O_DIRECTORY's bit, so it is tested whole.)
    creating = flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE
    ctypes, open_how, syscall = _binding()
    how = open_how(flags, mode if creating else 0, resolve)
    fd = syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(rel)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), rel)
    return int(fd)


@functools.cache
def have_openat2() -> bool:
    """Whether this kernel (and its seccomp filter) lets us call `openat2`, probed once."""
    root = os.open("/", _WALK_DIR_FLAGS)
    try:
        os.close(openat2(root, ".", os.O_PATH | os.O_DIRECTORY))
    except OSError:
        return False  # ENOSYS (old kernel), EPERM (a seccomp filter), ...
    finally:
        os.close(root)
    return True


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return st_mod.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _swapped(rel: str) -> OSError:
    return OSError(errno.EXDEV, "a symlink appeared on the way (changed while opening)", rel)


def walk_open(dir_fd: int, rel: str, flags: int, mode: int = 0o777) -> int:
    """`open_beneath` without `openat2`: a descriptor-relative walk that follows no symlink."""
    parts = [part for part in rel.split("/") if part not in ("", ".")]
    if rel.startswith("/") or ".." in parts:
        raise OSError(errno.EXDEV, "not a path beneath the folder", rel)
    if not parts:
        return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    fd = dir_fd
    try:
        for name in parts[:-1]:
            try:
                step = os.open(name, _WALK_DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP) and _is_link(fd, name):
                    raise _swapped(rel) from exc
                raise
            if fd != dir_fd:
                os.close(fd)
            fd = step
        last = parts[-1]
        try:
            opened = os.open(last, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP) and _is_link(fd, last):
                raise _swapped(rel) from exc
            raise
        if flags & os.O_PATH and st_mod.S_ISLNK(os.fstat(opened).st_mode):
            os.close(opened)  # O_PATH | O_NOFOLLOW opens a symlink itself rather than failing
            raise _swapped(rel)
        return opened
    finally:
        if fd != dir_fd:
            os.close(fd)


def open_beneath(dir_fd: int, rel: str, flags: int, mode: int = 0o777) -> int:
    """A descriptor of `rel` opened beneath `dir_fd` in one step (see the module docstring)."""
    if not have_openat2():
        return walk_open(dir_fd, rel, flags, mode)
    while True:
        try:
            return openat2(dir_fd, rel, flags, mode)
        except InterruptedError:
            continue
        except OSError as exc:
            # EAGAIN: a rename elsewhere raced a `..` in the lookup; the kernel asks to retry.
            if exc.errno != errno.EAGAIN:
                raise


__all__ = [
    "RESOLVE",
    "have_openat2",
    "open_beneath",
    "openat2",
    "walk_open",
]
