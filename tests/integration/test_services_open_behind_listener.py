"""A server answers before its services are open; what needs them waits for them, in order.

`lapce-bridge serve` listens first and opens the app's services behind the listener (its
start-up is measured to the first `ping`). Here the same steps are taken by hand, so each
phase can be looked at: a real `App`, a real `BridgeServer` on a Unix socket, real clients.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lapce_bridge.app import App
from lapce_bridge.core.errors import InvalidParams
from lapce_bridge.ipc.raw import RawClient
from lapce_bridge.ipc.server import BridgeServer
from lapce_bridge.rpc import Method, method
from tests.integration.serve_process import serve


async def test_ping_is_answered_while_the_services_open_and_the_rest_waits_in_order(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("a")
    app = App(workspace=ws, state_dir=tmp_path / "state")
    server = BridgeServer(app)
    server.hold_until_open()
    path = await server.listen_unix(tmp_path / "s.sock")
    try:
        early = await RawClient.connect_unix(path)
        assert (await early.request("ping"))["result"] == {"pong": True}
        assert "fs/stat" not in server.methods  # not open yet

        waiting = await RawClient.connect_unix(path)
        waiting.request_nowait("fs/stat", {"path": "a.txt"}, msg_id=1)
        waiting.request_nowait("ping", msg_id=2)  # behind a request that waits: waits too
        waiting.request_nowait("initialize", {"protocolVersion": 1}, msg_id=3)
        waiting.request_nowait("health/get", msg_id=4)
        await waiting.drain()
        assert (await early.request("ping"))["result"] == {"pong": True}
        assert server.statistics().requests == 2  # the early client's two pings, no more

        async with app:
            server.opened()
            answers = [await waiting.recv() for _ in range(4)]
            assert [a["id"] for a in answers] == [1, 2, 3, 4]  # in the order they came
            assert answers[0]["result"]["size"] == 1
            assert answers[1]["result"] == {"pong": True}
            methods = answers[2]["result"]["capabilities"]["methods"]
            assert {"fs/stat", "terminal/execute", "ping"} <= set(methods)
            assert answers[3]["result"]["slos"]["availability"]["calls"] >= 2  # early pings
            # Offered before the resource manager was open, the server's relief is in it now.
            assert app.resources is not None
            assert "connections" in [r.name for r in app.resources._reliefs]
            for client in (early, waiting):
                await client.close()
            await server.aclose()
    finally:
        await server.aclose()


async def test_services_that_fail_to_open_answer_what_waited_and_shut_the_server_down(
    tmp_path: Path,
) -> None:
    def broken(app: App) -> dict[str, Method]:
        raise InvalidParams("the extra methods cannot be built")

    app = App(workspace=tmp_path, state_dir=tmp_path / "state", extra_methods=broken)
    server = BridgeServer(app)
    server.hold_until_open()
    path = await server.listen_unix(tmp_path / "s.sock")
    try:
        client = await RawClient.connect_unix(path)
        client.request_nowait("fs/stat", {"path": "x"}, msg_id=1)
        await client.drain()
        failure: Any = None
        try:
            await app.__aenter__()
        except InvalidParams as exc:
            failure = exc
        assert failure is not None
        server.opened(failure)
        answer = await client.recv()
        assert answer["id"] == 1
        assert answer["error"]["code"] == -32002
        assert answer["error"]["data"]["shuttingDown"] is True
        async with asyncio.timeout(5):
            await server.wait_for_shutdown()  # requested by the failure
        await client.close()
    finally:
        await server.aclose()


@pytest.mark.shells
async def test_serve_answers_what_is_sent_the_moment_it_listens(tmp_path: Path) -> None:
    """Through a real `serve`: the first messages, sent as soon as it listens (while its
    services are most likely still opening), are all answered as they would be later."""
    async with serve(tmp_path) as srv:
        client = await RawClient.connect_unix(srv.socket)
        try:
            client.request_nowait("terminal/execute", {"command": "echo first"}, msg_id=1)
            client.request_nowait("ping", msg_id=2)
            client.request_nowait("fs/stat", {"path": "."}, msg_id=3)
            await client.drain()
            answers = {}
            for msg_id in (1, 2, 3):
                answer = await asyncio.wait_for(client.response(msg_id), 30)
                answers[msg_id] = answer
            assert answers[1]["result"]["output"] == "first\n", answers[1]
            assert answers[2]["result"] == {"pong": True}
            assert answers[3]["result"]["kind"] == "directory", answers[3]
        finally:
            await client.close()


async def test_initialize_lists_every_method_while_the_services_open(tmp_path: Path) -> None:
    """`initialize` needs no service: told the names the app will serve, the server answers
    it at once, and lists exactly what it serves once open."""
    app = App(workspace=tmp_path, state_dir=tmp_path / "state")
    server = BridgeServer(app)
    server.hold_until_open(app.method_names())
    path = await server.listen_unix(tmp_path / "s.sock")
    try:
        client = await RawClient.connect_unix(path)
        early = (await client.request("initialize", {"protocolVersion": 1}))["result"]
        assert "fs/stat" not in server.methods  # not open yet, and listed all the same
        async with app:
            server.opened()
            later = (await client.request("initialize", {"protocolVersion": 1}))["result"]
            listed = set(early["capabilities"]["methods"])
            assert listed == set(later["capabilities"]["methods"]) == set(server.methods)
            assert {"fs/stat", "terminal/execute", "health/get", "ping"} <= listed
        await client.close()
    finally:
        await server.aclose()


async def test_a_service_open_before_the_others_is_served_and_order_is_kept(
    tmp_path: Path,
) -> None:
    """A service that opens first is served from then on: what waited for it at the head of
    a connection goes at once; what came after a request still waiting waits behind it."""

    def soon(params: Any, ctx: Any) -> str:
        return "soon"

    def late(params: Any, ctx: Any) -> str:
        return "late"

    app = App(services=False, extra_methods={"t/soon": method(soon), "t/late": method(late)})
    server = BridgeServer(app)
    server.hold_until_open(app.method_names())
    path = await server.listen_unix(tmp_path / "s.sock")
    try:
        async with app:
            first = await RawClient.connect_unix(path)
            first.request_nowait("t/soon", msg_id=1)
            first.request_nowait("ping", msg_id=2)  # behind one that waits: waits too
            second = await RawClient.connect_unix(path)
            second.request_nowait("t/late", msg_id=1)
            second.request_nowait("t/soon", msg_id=2)  # behind t/late: waits for it
            first.request_nowait("t/soon", msg_id=3)
            await first.drain()
            await second.drain()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):  # t/soon is not served yet: nothing comes
                    await first.recv()
            server.serve_early({"t/soon": app.methods["t/soon"]})
            async with asyncio.timeout(10):
                answers = [await first.recv() for _ in range(3)]
            assert [(a["id"], a["result"]) for a in answers] == [
                (1, "soon"),
                (2, {"pong": True}),
                (3, "soon"),
            ]
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):  # t/late is not served yet: nothing comes
                    await second.recv()
            server.opened()
            answers = [await second.recv() for _ in range(2)]
            assert [(a["id"], a["result"]) for a in answers] == [(1, "late"), (2, "soon")]
            for client in (first, second):
                await client.close()
    finally:
        await server.aclose()


async def test_the_app_names_what_it_serves_before_opening_and_opens_the_terminals_first(
    tmp_path: Path,
) -> None:
    opened: list[set[str]] = []
    for host in (False, True):
        app = App(workspace=tmp_path, state_dir=tmp_path / "state", terminal_host=host)
        app.on_open(lambda served: opened.append(set(served)))
        named = app.method_names()
        async with app:
            assert named == set(app.methods)
        terminals, files = opened[-2:]
        assert "terminal/execute" in terminals
        assert not any(n.startswith("fs/") for n in terminals)
        assert "fs/read" in files
        assert not any(n.startswith("terminal/") for n in files)


async def test_imports_in_the_worker_shorten_the_switch_interval_and_restore_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a worker imports the services' modules the loop gets the GIL back within 0.5 ms;
    apps opening at once share the setting, and the last one done restores it."""
    import sys

    from lapce_bridge.app import _import_in_worker

    for name in ("slow_a", "slow_b"):
        (tmp_path / f"{name}.py").write_text(
            "import sys, time\ntime.sleep(0.05)\nSEEN = sys.getswitchinterval()\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    before = sys.getswitchinterval()
    try:
        await asyncio.gather(_import_in_worker("slow_a"), _import_in_worker("slow_b"))
        assert [sys.modules[m].SEEN for m in ("slow_a", "slow_b")] == [0.0005, 0.0005]
        assert sys.getswitchinterval() == before
    finally:
        for name in ("slow_a", "slow_b"):
            sys.modules.pop(name, None)
