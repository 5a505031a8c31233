"""Fault controls inside a running `lapce-bridge serve`, for chaos scenarios and tests.

Loaded with `lapce-bridge serve --extra-methods lapce_bridge.testing.server_faults:methods`
(never by default). It puts a `FaultyFs` between the file service and the real file system
(every call passes through untouched until a fault is added) and serves:

- `test/faults/add {op, errno?: "EIO", times?: 1 (null: every call), pathGlob?, after?: 0}`
  makes matching file-system calls fail; answers `{faults}` (how many are armed);
- `test/faults/clear` removes them; `test/faults/count {op, outcome?}` counts calls seen;
- `test/memory/allocate {mib}` allocates and touches real memory in the server process (held
  until `test/memory/release`), so memory pressure is the server's own, as a leak would be;
- `test/memory/budget {bytes}` sets the resource manager's budget live (`serve
  --memory-budget` sets it at start).

These exist because a healthy disk cannot be made to fail on demand; everything else in a
chaos run is real.
"""

from __future__ import annotations

import errno as errno_mod
from typing import Any

from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.rpc import CallContext, Method, Params, method
from lapce_bridge.testing.faultfs import Fault, FaultyFs

MiB = 1024 * 1024


def methods(app: Any) -> dict[str, Method]:
    # Put between the file service and the disk the moment the service opens (the table is
    # built before the services open: a server lists every method in its first answer).
    faulty: list[FaultyFs] = []

    def install(served: Any = None) -> None:
        store = _file_store(app)
        if not faulty and store is not None:
            faulty.append(FaultyFs(store.ops))
            store.ops = faulty[0]

    install()  # already open: an app built by hand
    on_open = getattr(app, "on_open", None)
    if on_open is not None:
        on_open(install)
    held: list[bytearray] = []

    def need_fs() -> FaultyFs:
        install()
        if not faulty:
            raise InvalidParams("this server has no file service")
        return faulty[0]

    def add(params: Params, ctx: CallContext) -> dict[str, int]:
        p = params if isinstance(params, dict) else {}
        name = p.get("errno", "EIO")
        code = getattr(errno_mod, str(name), None) if name is not None else None
        if name is not None and not isinstance(code, int):
            raise InvalidParams(f"unknown errno {name!r}")
        try:
            fault = Fault(
                str(p.get("op", "")),
                code,
                times=p.get("times", 1),
                path_glob=p.get("pathGlob"),
                after=int(p.get("after", 0)),
            )
        except ValueError as exc:
            raise InvalidParams(str(exc)) from exc
        fs = need_fs()
        fs.add(fault)
        return {"faults": len(fs.faults)}

    def clear(params: Params, ctx: CallContext) -> None:
        need_fs().clear()

    def count(params: Params, ctx: CallContext) -> int:
        p = params if isinstance(params, dict) else {}
        return need_fs().count(str(p.get("op", "")), p.get("outcome"))

    def allocate(params: Params, ctx: CallContext) -> dict[str, int]:
        mib = int((params or {}).get("mib", 0)) if isinstance(params, dict) else 0
        block = bytearray(mib * MiB)
        block[::4096] = b"x" * len(range(0, len(block), 4096))  # touched: resident
        held.append(block)
        return {"heldMiB": sum(map(len, held)) // MiB}

    def release(params: Params, ctx: CallContext) -> dict[str, int]:
        held.clear()
        return {"heldMiB": 0}

    def budget(params: Params, ctx: CallContext) -> dict[str, int]:
        if app.resources is None:
            raise InvalidParams("this server samples no memory pressure")
        app.resources.budget_bytes = int((params or {}).get("bytes", 0))
        return {"budgetBytes": app.resources.budget_bytes}

    table = {
        "test/faults/add": add,
        "test/faults/clear": clear,
        "test/faults/count": count,
        "test/memory/allocate": allocate,
        "test/memory/release": release,
        "test/memory/budget": budget,
    }
    return {name: method(fn) for name, fn in table.items()}


def _file_store(app: Any) -> Any:
    for service in getattr(app, "services", ()):
        store = getattr(service, "store", None)
        if store is not None and hasattr(store, "ops"):
            return store
    return None


SPEC = "lapce_bridge.testing.server_faults:methods"

__all__ = ["SPEC", "methods"]
