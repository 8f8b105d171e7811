"""Print the requirements of inferq's base install plus the named extras, read from pyproject.toml.

The images install dependencies from this list in a layer of their own, built from
pyproject.toml and constraints.txt alone, so that a change to the source does not reinstall them:

    python requirements.py pyproject.toml worker cuda > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as fh:
        project = tomllib.load(fh)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - optional.keys())
    if unknown:
        raise SystemExit(f"extras must be among {sorted(optional)}, got {unknown}")
    chosen = [req for extra in extras for req in optional[extra]]
    # An extra naming inferq itself (dev = inferq[worker,bench]) would install the source.
    return [req for req in (*project["dependencies"], *chosen) if not req.startswith("inferq")]


if __name__ == "__main__":
    print(*requirements(sys.argv[1], sys.argv[2:]), sep="\n")
