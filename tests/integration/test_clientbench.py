"""``inferq bench --client``'s cost table runs every client path against a private Redis."""

from __future__ import annotations

import pytest

from inferq.worker.tools.clientbench import client_costs

pytestmark = pytest.mark.integration


def test_cost_table_measures_every_client_path() -> None:
    rows = client_costs(60)
    assert [r.name for r in rows] == [
        "delay",
        "get (stored)",
        "submit_many + gather",
        "aio submit + await",
        "aio concurrent + gather",
    ]
    for row in rows:
        assert row.count == 60
        assert row.cpu_us > 0 and row.wall_us > 0, row
