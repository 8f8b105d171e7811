"""Prometheus rules: the monitoring contract, checked against the metrics the code exports.

Each alert's metrics (recording rules expanded) and thresholds are compared with CONTRACT below,
which the README's alerts table repeats; a renamed metric or a changed number fails here. When
promtool is installed, rules.test.yml also runs every alert on synthetic series.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from inferq.worker.metrics import CLIENT_ERROR_REASONS
from tests.deploy.manifests import (
    ENV_VARS,
    METRICS,
    RULES_FILE,
    check_expr,
    duration_seconds,
    load_yaml,
    strip_literals,
)

RULES_TEST_FILE = RULES_FILE.with_name("rules.test.yml")
COMPARISON = re.compile(r"(>=|<=|==|!=|>|<)\s*(?:bool\s+)?(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)\b")
OUTCOME_MATCHER = re.compile(r'outcome\s*(=~|!~)\s*"([^"]*)"')


@dataclass(frozen=True)
class Alert:
    """What an alert reads and where it fires: the contract an operator tunes against."""

    metrics: frozenset[str]
    thresholds: frozenset[tuple[str, float]]
    severity: str


def _alert(metrics: set[str], thresholds: set[tuple[str, float]], severity: str) -> Alert:
    return Alert(frozenset(metrics), frozenset(thresholds), severity)


CONTRACT = {
    # Service time: the seed's 100 ms at p99.
    "InferqInferenceP99High": _alert({"inferq_inference_seconds"}, {(">", 0.1)}, "warning"),
    # End-to-end, queue wait included: the looser alert a backlog trips.
    "InferqHighLatencyP99": _alert({"inferq_request_latency_seconds"}, {(">", 2)}, "warning"),
    "InferqQueueBacklog": _alert({"inferq_queue_depth"}, {(">", 1024)}, "warning"),
    "InferqBacklogGrowing": _alert({"inferq_backlog"}, {(">", 1)}, "warning"),
    "InferqGpuUnderutilised": _alert(
        {"inferq_gpu_utilization_ratio", "inferq_backlog"}, {("<", 0.3), (">", 0)}, "warning"
    ),
    "InferqDeviceMemoryHigh": _alert(
        {"inferq_device_memory_reserved_bytes", "inferq_device_memory_total_bytes"},
        {(">", 0.8)},
        "warning",
    ),
    "InferqServerErrors": _alert({"inferq_requests_total"}, {(">", 0.01)}, "critical"),
    "InferqWorkerDown": _alert({"inferq_worker_up"}, {("==", 0)}, "critical"),
    "InferqRedeliveries": _alert(
        {"inferq_redeliveries_total", "inferq_requests_total"}, {(">", 0.01)}, "warning"
    ),
    "InferqDeadLetters": _alert({"inferq_dead_letters_total"}, {(">", 0)}, "warning"),
}


@pytest.fixture(scope="module")
def recordings(rules: dict[str, Any]) -> dict[str, str]:
    return {r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "record" in r}


@pytest.fixture(scope="module")
def alerts(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def thresholds(expr: str) -> set[tuple[str, float]]:
    return {(op, float(value)) for op, value in COMPARISON.findall(strip_literals(expr))}


def metrics_read(expr: str, recordings: dict[str, str]) -> set[str]:
    """Exported metrics ``expr`` reads, through any recording rules it names."""
    used, problems = check_expr(expr, set(recordings))
    assert not problems, f"{expr}: {problems}"
    for name in set(re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", expr)) & recordings.keys():
        used |= metrics_read(recordings[name], recordings)
    return used


def outcome_sets(expr: str) -> dict[str, set[str]]:
    return {op: set(values.split("|")) for op, values in OUTCOME_MATCHER.findall(expr)}


def test_rules_structure_and_required_alerts(rules: dict[str, Any]) -> None:
    groups = rules["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    alerts = []
    for group in groups:
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert ("record" in rule) != ("alert" in rule), rule
            assert str(rule["expr"]).strip()
            if "record" in rule:
                assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"])
            else:
                alerts.append(rule["alert"])
                duration_seconds(rule.get("for", "0s"))
                assert rule["labels"]["severity"] in {"info", "warning", "critical"}
                assert rule["annotations"]["summary"]
                assert rule["annotations"]["runbook"], f"{rule['alert']} has no runbook line"
    assert len(alerts) == len(set(alerts))
    assert set(alerts) == set(CONTRACT), set(alerts) ^ set(CONTRACT)


def test_expression_checker_rejects_bad_queries() -> None:
    # Guards the checker itself, so a regression cannot make the tests vacuous.
    assert check_expr("inferq_requests_total", set())[1] == []
    assert check_expr("inferq_latency_seconds", set())[1]
    assert check_expr("inferq_queue_depth_count", set())[1]
    assert check_expr("rate(inferq_queue_depth[5m])", set())[1]
    assert check_expr("model:inferq_missing:rate5m > 1", set())[1]
    assert check_expr(
        "histogram_quantile(0.9, sum by (model) (rate(inferq_batch_size_bucket[5m])))",
        set(),
    )[1]
    assert check_expr('inferq_worker_up{job="inferq_bogus"}', set())[1] == []


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_alert_reads_the_contracted_metrics_at_the_contracted_threshold(
    name: str, alerts: dict[str, dict[str, Any]], recordings: dict[str, str]
) -> None:
    rule, want = alerts[name], CONTRACT[name]
    assert metrics_read(rule["expr"], recordings) == want.metrics
    assert thresholds(rule["expr"]) == want.thresholds
    assert rule["labels"]["severity"] == want.severity


def test_recording_rules_hold_no_thresholds(recordings: dict[str, str]) -> None:
    # A comparison inside a recording rule would move a threshold out of the contract's sight.
    for name, expr in recordings.items():
        assert not thresholds(expr), name


def test_inference_alert_is_the_p99_of_service_time(
    alerts: dict[str, dict[str, Any]], recordings: dict[str, str]
) -> None:
    expr = alerts["InferqInferenceP99High"]["expr"]
    (recorded,) = re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", expr)
    assert re.match(r"histogram_quantile\(0\.99,", recordings[recorded])
    assert "inferq_inference_seconds_bucket" in recordings[recorded]


def test_server_errors_leave_out_exactly_the_client_errors(
    recordings: dict[str, str],
) -> None:
    server = outcome_sets(recordings["model:inferq_requests_server_errors:ratio_rate5m"])
    assert server == {"!~": CLIENT_ERROR_REASONS | {"success"}}
    client = outcome_sets(recordings["model_outcome:inferq_requests_client_errors:rate5m"])
    assert client == {"=~": set(CLIENT_ERROR_REASONS)}


def test_runbooks_name_real_metrics_and_settings(alerts: dict[str, dict[str, Any]]) -> None:
    for name, rule in alerts.items():
        runbook = rule["annotations"]["runbook"]
        for metric in re.findall(r"\binferq_[a-z_]+", runbook):
            assert metric in METRICS or metric + "_total" in METRICS, f"{name}: {metric}"
        for setting in re.findall(r"\bINFERQ_[A-Z_]+", runbook):
            assert setting in ENV_VARS, f"{name}: {setting}"


def test_rule_unit_tests_cover_every_alert_firing() -> None:
    tests = load_yaml(RULES_TEST_FILE)
    assert tests["rule_files"] == [RULES_FILE.name]
    firing = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert firing == set(CONTRACT), firing ^ set(CONTRACT)


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (apt-get install prometheus); the contract checks above ran",
)
def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    for argv in (["check", "rules", str(RULES_FILE)], ["test", "rules", str(RULES_TEST_FILE)]):
        done = subprocess.run(["promtool", *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


def test_threshold_parser_reads_comparisons_only() -> None:
    # Guards the parser, so that a regression cannot make the contract checks vacuous.
    assert thresholds("histogram_quantile(0.99, x[5m]) > 0.1") == {(">", 0.1)}
    assert thresholds('a{le="0.5"} < 3e-1 and b >= bool 2') == {("<", 0.3), (">=", 2.0)}
    assert thresholds("rate(x[5m])") == set()
