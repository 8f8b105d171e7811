"""Parsed deployment files, once per session."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy.manifests import (
    COMPOSE_FILE,
    DASHBOARD_FILE,
    DOCKERFILE,
    RULES_FILE,
    Stage,
    load_yaml,
    parse_dockerfile,
)


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="session")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="session")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def rules() -> dict[str, Any]:
    return load_yaml(RULES_FILE)


@pytest.fixture(scope="session")
def recorded(rules: dict[str, Any]) -> set[str]:
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
