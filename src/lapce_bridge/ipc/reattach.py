"""What a `BridgeClient` holds on the server, re-attached by itself after a reconnect.

Theory of operation: `Reattach` stands between the link and the user's handlers of the two
notifications that are streams: `terminal/data` (numbered per execution) and `fs/didChange`
(numbered per watch). It remembers each stream's last delivered `seq` (and, for output, the
byte offset where it ended) and each watch the client made, with the `idempotencyKey` it was
made under (`fs/watch` is always keyed here), and after every reconnect of the recovery path
it re-attaches them:

- each watch is sent again with its key: the server gives the same watch back (after a
  server restart too, from its saved snapshot) and reports what changed meanwhile;
- every output stream not finished is resumed with `terminal/resume` from the last `seq`
  delivered (a streamed `terminal/execute` sent with recovery is resumed by its key even
  before its first output). When the server's ring no longer holds what was missed, the
  named byte range is read with `terminal/readOutput` and delivered as one `terminal/data`
  (its `seq` the last it stands for) before anything after it.

Output is delivered in order, exactly once: a `terminal/data` whose `seq` was delivered
already is dropped (a repeat of a resume), one that comes early (after a gap being read) is
held until the gap is filled. `fs/didChange` goes straight through: a change may be
reported twice (live, and in a rescan's report that raced it), and dropping a notification
for its number could lose one. A notification without `seq` (an older server) goes straight
through too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from lapce_bridge.core.errors import BridgeError, ConnectionLost
from lapce_bridge.ipc.link import Link, NotificationHandler

log = logging.getLogger("lapce_bridge.client")

STREAMS = ("terminal/data", "fs/didChange")
_FINISHED = "terminal/commandFinished"
_READ_PAGE = 4 << 20


@dataclass(slots=True)
class _Output:
    seq: int = 0  # delivered
    end: int = 0  # UTF-8 bytes delivered: the offset the next notification starts at
    held: dict[int, dict[str, Any]] = field(default_factory=dict)
    reading: bool = False  # a gap is being read from the spool
    key: str | None = None


class Reattach:
    def __init__(self, link: Link) -> None:
        self.link = link
        self._handlers: dict[str, list[NotificationHandler]] = {m: [] for m in STREAMS}
        self._outputs: dict[str, _Output] = {}
        self._pending_keys: set[str] = set()  # streamed executes not yet seen to output
        self._watches: dict[str, dict[str, Any]] = {}  # the params each was made with
        self._task: asyncio.Task[None] | None = None
        # Outputs delivered whole, lately: a streamed execution sent with recovery is resumed
        # by its id and by its key (nothing says they are one until the key's answer), and
        # the repeat must not start it over.
        self._done: deque[str] = deque(maxlen=256)
        self.reattached = 0
        for method in STREAMS:
            link.on_notification(method, partial(self._receive, method))
        link.on_notification(_FINISHED, self._finished)

    # -- what the client sends ------------------------------------------------------------
    def before(self, method: str, params: Any) -> Any:
        """Params as sent: `fs/watch` always carries a key (what finds it again)."""
        if method == "fs/watch" and type(params) is dict and "idempotencyKey" not in params:
            return {**params, "idempotencyKey": uuid.uuid4().hex}
        return params

    def sent_with_recovery(self, method: str, params: dict[str, Any]) -> None:
        """A keyed streamed `terminal/execute`: resumable by its key from now on."""
        if method == "terminal/execute" and params.get("stream"):
            self._pending_keys.add(params["idempotencyKey"])

    def answered(self, method: str, params: Any, result: Any) -> None:
        if type(params) is not dict:
            return
        if method == "fs/watch" and type(result) is dict:
            watch_id = result.get("watchId")
            if isinstance(watch_id, str):
                self._watches[watch_id] = params
        elif method == "fs/unwatch":
            self._watches.pop(params.get("watchId"), None)  # type: ignore[arg-type]

    # -- what the user hears ----------------------------------------------------------------
    def on_notification(self, method: str, handler: NotificationHandler) -> Callable[[], None]:
        handlers = self._handlers[method]
        handlers.append(handler)

        def remove() -> None:
            if handler in handlers:
                handlers.remove(handler)

        return remove

    def _deliver(self, method: str, params: Any) -> None:
        for handler in list(self._handlers[method]):
            try:
                handler(params)
            except Exception:
                log.exception("notification handler for %s failed", method)

    def _receive(self, method: str, params: Any) -> None:
        if (
            method == "fs/didChange"
            or type(params) is not dict
            or type(params.get("seq")) is not int
        ):
            self._deliver(method, params)
            return
        execution_id = params.get("executionId")
        if not isinstance(execution_id, str):
            self._deliver(method, params)
            return
        if execution_id in self._done:
            return  # a repeat of a finished output (resumed by its id and by its key too)
        out = self._outputs.setdefault(execution_id, _Output())
        seq = params["seq"]
        if seq <= out.seq:
            return
        out.held[seq] = params
        self._release(execution_id, out)

    def _release(self, execution_id: str, out: _Output) -> None:
        while not out.reading and (params := out.held.pop(out.seq + 1, None)) is not None:
            out.seq = params["seq"]
            out.end = params["offset"] + len(params["data"].encode())
            self._deliver("terminal/data", params)
        # Held ones a gap read already covered are dropped.
        for seq in [s for s in out.held if s <= out.seq]:
            del out.held[seq]

    def _finished(self, params: Any) -> None:
        if type(params) is dict:
            out = self._outputs.get(params.get("executionId"))  # type: ignore[arg-type]
            if out is not None and not out.held and not out.reading:
                del self._outputs[params["executionId"]]
                self._done.append(params["executionId"])

    # -- after a reconnect --------------------------------------------------------------------
    def reconnected(self) -> None:
        """The recovery path reconnected: re-attach in the background (one run at a time)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self.reattach())

    async def reattach(self) -> None:
        """Resume every output stream and send every watch again; a connection lost
        meanwhile leaves the rest to the next reconnect."""
        with contextlib.suppress(ConnectionLost):
            await self._resume()  # first: the server's rings are losing output meanwhile
            for watch_id, params in list(self._watches.items()):
                try:
                    await self.link.call("fs/watch", params, None, cancel=False)
                except BridgeError as exc:
                    if isinstance(exc, ConnectionLost):
                        raise
                    log.warning("watch %s could not be re-attached: %s", watch_id, exc)
                    self._watches.pop(watch_id, None)
            self.reattached += 1

    async def _resume(self) -> None:
        wanted: list[dict[str, Any]] = [
            {"executionId": eid, "seq": out.seq, "offset": out.end}
            for eid, out in self._outputs.items()
        ]
        wanted += [{"idempotencyKey": key, "seq": 0} for key in self._pending_keys]
        if not wanted:
            return
        answer = await self.link.call("terminal/resume", {"streams": wanted}, None, cancel=False)
        for stream in answer.get("streams", []):
            execution_id = stream.get("executionId")
            key = stream.get("idempotencyKey")
            if stream.get("unknown"):
                # Gone with a server that restarted without its terminals: nothing to resume.
                if isinstance(execution_id, str):
                    self._outputs.pop(execution_id, None)
                if isinstance(key, str):
                    self._pending_keys.discard(key)
                continue
            if not isinstance(execution_id, str):
                continue  # keyed, no output yet: its notifications come here from now on
            if isinstance(key, str):
                self._pending_keys.discard(key)
            if execution_id in self._done:
                continue  # delivered whole already (resumed by its id in this same call)
            out = self._outputs.setdefault(execution_id, _Output(key=key))
            overflow = stream.get("overflow")
            if overflow is not None and overflow["toSeq"] > out.seq:
                await self._read_gap(execution_id, out, overflow)
            self._release(execution_id, out)
            # The replay came before this answer: a finished stream is then whole.
            if stream.get("finished") and out.seq >= stream.get("lastSeq", 0) and not out.held:
                self._outputs.pop(execution_id, None)
                self._done.append(execution_id)

    async def _read_gap(self, execution_id: str, out: _Output, overflow: dict[str, Any]) -> None:
        """Deliver the bytes the ring lost, read from the spool, as one notification."""
        out.reading = True
        try:
            start, end = out.end, overflow["end"]
            parts: list[bytes] = []
            offset = start
            while offset < end:
                page = await self.link.call(
                    "terminal/readOutput",
                    {"executionId": execution_id, "offset": offset, "limit": _READ_PAGE},
                    None,
                    cancel=False,
                )
                data = page["data"].encode()
                if not data:
                    break
                parts.append(data)
                offset += len(data)
            text = b"".join(parts)[: end - start].decode("utf-8", "replace")
        finally:
            out.reading = False
        if text:
            self._deliver(
                "terminal/data",
                {
                    "executionId": execution_id,
                    "data": text,
                    "seq": overflow["toSeq"],
                    "offset": start,
                },
            )
        out.seq = overflow["toSeq"]
        out.end = end

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


__all__ = ["STREAMS", "Reattach"]
