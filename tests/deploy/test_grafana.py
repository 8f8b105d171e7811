"""The Grafana dashboard queries only exported metrics, and shows every one."""

from __future__ import annotations

import re
from typing import Any

from tests.deploy.manifests import (
    GRAFANA_PROVISIONING,
    METRICS,
    all_panels,
    check_expr,
    load_yaml,
    walk,
)


def test_dashboard_panels_have_unique_ids_and_queries(
    dashboard: dict[str, Any],
) -> None:
    panels = all_panels(dashboard)
    assert len(panels) >= 10
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert dashboard["uid"] and dashboard["title"]
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        exprs = [t.get("expr", "") for t in panel.get("targets", [])]
        assert exprs and all(e.strip() for e in exprs), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_dashboard_uses_only_exported_metrics_and_covers_them(
    dashboard: dict[str, Any],
) -> None:
    used: set[str] = set()
    queries = [
        value
        for key, value in walk(dashboard)
        if key in ("expr", "query", "definition") and isinstance(value, str)
    ]
    assert queries
    for query in queries:
        metrics, problems = check_expr(query, recorded=set())
        assert not problems, f"{query}: {problems}"
        used |= metrics
    missing = set(METRICS) - used
    assert not missing, f"dashboard has no panel for {sorted(missing)}"


def test_dashboard_variables_and_datasources_are_defined(
    dashboard: dict[str, Any],
) -> None:
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    provisioned = {
        d["uid"]
        for d in load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    }
    for key, value in walk(dashboard):
        if key == "datasource" and isinstance(value, dict) and "uid" in value:
            uid = value["uid"]
            if value.get("type") == "grafana":
                continue
            match = re.fullmatch(r"\$\{(\w+)\}", uid)
            assert (match and match.group(1) in variables) or uid in provisioned, uid
        if key == "expr":
            for var in re.findall(r"\$(?!__)(\w+)|\$\{(?!__)(\w+)\}", value):
                name = var[0] or var[1]
                assert name in variables, f"undefined variable ${name}"
