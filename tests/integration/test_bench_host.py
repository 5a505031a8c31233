"""The terminal host's bench rows time real servers (with the host and without, in one run)
and a real SIGKILL of a supervised server; every figure comes from a clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from lapce_bridge.bench.host import run
from lapce_bridge.bench.runner import SUITES, BenchContext
from lapce_bridge.host.places import host_places
from lapce_bridge.host.process import host_pid

pytestmark = pytest.mark.timeout(300)


async def test_host_rows_compare_both_servers_in_one_run_and_time_a_real_restart(
    tmp_path: Path,
) -> None:
    assert SUITES["host"] == "lapce_bridge.bench.host"
    rows = await run(BenchContext(workdir=tmp_path, quick=True))
    by_name = {row.name: row for row in rows}
    hosted = by_name["echo test through IPC, terminals in the host process"]
    local = by_name["echo test through IPC, terminals in the server process"]
    cost = by_name["terminal host's cost, echo test p50"]
    link = by_name["terminal host's link, terminal/list p50"]
    assert hosted.samples == local.samples == cost.samples == link.samples == 100
    assert hosted.p50 is not None
    assert local.p50 is not None
    assert hosted.p50 > 0
    assert local.p50 > 0
    assert cost.value == pytest.approx(hosted.p50 - local.p50)  # the rows' own p50s
    assert link.value == pytest.approx(link.extra["host_us"] - link.extra["server_us"])
    assert link.extra["server_us"] > 0
    # CPU per echo from /proc, for the right processes: the host runs the terminals (more
    # than the server forwarding to it), the server alone runs them too.
    cpu = by_name["terminal host's CPU per echo test"]
    assert cpu.samples == 100
    assert cpu.value == pytest.approx(
        cpu.extra["server_us"] + cpu.extra["host_us"] - cpu.extra["alone_us"]
    )
    assert 0 < cpu.extra["server_us"] < cpu.extra["host_us"]
    assert cpu.extra["server_us"] < cpu.extra["alone_us"]
    answering = by_name["server SIGKILL to answering again (terminals in the host)"]
    usable = by_name["server SIGKILL to its terminals usable (terminals in the host)"]
    assert answering.samples == usable.samples == 3
    assert answering.value is not None
    assert 0 < answering.value <= answering.extra["max_ms"]
    assert usable.value is not None
    assert usable.value > 0
    # No host is left behind by either part.
    for base in ("host-on", "host-rto"):
        places = host_places(tmp_path / base / "state", tmp_path / base / "workspace")
        assert places.lock.exists()  # a host ran there
        assert host_pid(places) is None  # and holds its lock no more
