"""Typed reads of values from a parsed TOML document, for config loaders (``shared/spec.py``).

TOML already typed the values, so a wrong type is refused, never converted; every refusal is a
:class:`ConfigError` naming the key, what was expected and what came.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from inferq.shared.errors import ConfigError


def section(data: dict[str, Any], name: str, known: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The table ``[name]`` of ``data`` (empty if absent), holding only the keys ``known[name]``."""
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table, got {type(value).__name__}")
    check_keys(value, name, known)
    return value


def check_keys(table: dict[str, Any], section: str, known: Mapping[str, Sequence[str]]) -> None:
    """Refuse keys of ``table`` outside ``known[section]`` ("" is the top level): a typo."""
    allowed = known[section]
    unknown = [f"{section}.{k}" if section else str(k) for k in table if k not in allowed]
    if unknown:
        owner = f"[{section}]" if section else "the top level"
        raise ConfigError(
            f"{owner} allows only the keys {', '.join(allowed)}, got unknown {', '.join(unknown)}"
        )


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    # NaN and inf would pass every range check (comparisons with NaN are False).
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def choice(value: Any, allowed: tuple[str, ...], key: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{key} must be one of {allowed}, got {value!r}")
    return value


def integer(value: Any, key: str) -> int:
    if not is_int(value):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    return int(value)


def number(value: Any, key: str) -> float:
    if not is_number(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def share(value: Any, key: str) -> float:
    """A number from 0 to 1."""
    fraction = number(value, key)
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"{key} must lie in 0..1, got {fraction}")
    return fraction


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def integers(value: Any, key: str) -> tuple[int, ...]:
    if not (is_list(value) and all(is_int(v) for v in value)):
        raise ConfigError(f"{key} must be a list of integers, got {value!r}")
    return tuple(int(v) for v in value)


def numbers(value: Any, key: str) -> tuple[float, ...]:
    if not (is_list(value) and all(is_number(v) for v in value)):
        raise ConfigError(f"{key} must be a list of finite numbers, got {value!r}")
    return tuple(float(v) for v in value)


def strings(value: Any, key: str) -> tuple[str, ...]:
    if not (is_list(value) and all(isinstance(v, str) for v in value)):
        raise ConfigError(f"{key} must be a list of strings, got {value!r}")
    return tuple(value)
