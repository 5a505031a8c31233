"""The file service's method names, light on purpose (no file-system code).

A starting server lists every method it will serve in its `initialize` answer before its
services are open (`App.method_names`); the terminal methods' names come from
`terminal.params.METHODS`, the file service's from here. `FileService.methods()` serves
exactly these names (the app checks the promise when it opens, a test checks it too).
"""

from __future__ import annotations

FILE_METHODS: tuple[str, ...] = (
    "fs/read",
    "fs/write",
    "fs/stat",
    "fs/list",
    "fs/watch",
    "fs/unwatch",
    "fs/edit",
    "fs/search",
    "fs/tree",
)

__all__ = ["FILE_METHODS"]
