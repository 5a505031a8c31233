"""`SyncClient`: a `BridgeClient` for scripts, every method blocking until its answer.

It runs an event loop in a daemon thread and forwards each call to the `BridgeClient` there
(`SyncClient.spawn().execute("make test").exit_code`): the same methods, typed as the
client's (`lapce_bridge.typed_client`), the same errors.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from lapce_bridge.ipc.client import BridgeClient

T = TypeVar("T")


class SyncClient:
    """A `BridgeClient` for scripts: every method blocks until its answer."""

    def __init__(self, opener: Coroutine[Any, Any, BridgeClient]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="lapce-bridge client", daemon=True
        )
        self._thread.start()
        try:
            self._client = _run(self._loop, opener)
        except BaseException:
            self._stop()
            raise

    @classmethod
    def spawn(cls, socket_path: Path | str | None = None, **kwargs: Any) -> SyncClient:
        """A client to the server on `socket_path`, started (and kept running) if need be."""
        return cls(BridgeClient.spawn(socket_path, **kwargs))

    @classmethod
    def connect(cls, socket_path: Path | str | None = None, **kwargs: Any) -> SyncClient:
        """A client to a server already listening on `socket_path`."""

        async def open_client() -> BridgeClient:
            return await BridgeClient(socket_path, **kwargs).connect()

        return cls(open_client())

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not callable(method) or name.startswith("_"):
            return method

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return _run(self._loop, method(*args, **kwargs))

        return blocking

    def close(self) -> None:
        try:
            _run(self._loop, self._client.close())
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    future: Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
    return future.result()


__all__ = ["SyncClient"]
