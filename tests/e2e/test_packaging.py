"""inferq installs as one namespace: ``inferq.producer``, ``inferq.worker``, ``inferq.shared``.

A service with its own top-level ``shared``, ``worker`` or ``producer`` package must be able to
install inferq beside it, so inferq must never install those names itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("producer", "worker", "shared")


def _run_outside(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Python started in a directory outside the checkout, with nothing of ours on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_only_the_inferq_namespace_imports_outside_the_checkout(tmp_path: Path) -> None:
    probe = (
        "import importlib.util as u\n"
        "import inferq.shared.settings, inferq.producer.client\n"
        "from inferq import submit_job, submit_many, gather\n"
        "print(submit_job.name)\n"
        "print([n for n in ('shared', 'worker', 'producer') if u.find_spec(n) is not None])\n"
    )
    done = _run_outside(tmp_path, probe)
    assert done.returncode == 0, done.stderr
    task_name, leaked = done.stdout.split("\n")[:2]
    assert task_name == "inferq.infer"  # task, queue and key names did not change
    assert leaked == "[]", f"inferq must not install top-level {leaked}"


def test_a_service_with_its_own_shared_package_keeps_it(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "__init__.py").write_text("OWNER = 'the service'\n")
    done = _run_outside(
        tmp_path, "import shared, inferq.shared.keys as k; print(shared.OWNER, k.TASK_NAME)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "the service inferq.infer"


def test_every_package_folder_is_declared() -> None:
    """A new sub-package that pyproject does not list would be missing from the wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    on_disk = {"inferq"} | {
        "inferq." + ".".join(init.parent.relative_to(ROOT).parts)
        for folder in FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert declared == on_disk, declared ^ on_disk
    assert config["package-dir"] == {"inferq": "inferq"} | {f"inferq.{f}": f for f in FOLDERS}


def test_the_checkout_links_mirror_the_namespace() -> None:
    for folder in FOLDERS:
        link = ROOT / "inferq" / folder
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve(), link


@pytest.mark.slow
def test_the_wheel_holds_the_namespace_only(tmp_path: Path) -> None:
    leftover = not (ROOT / "build").exists()  # an in-tree build leaves build/ behind
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if leftover:
        shutil.rmtree(ROOT / "build", ignore_errors=True)
    if built.returncode != 0 and "No module named" in built.stderr:
        pytest.skip(f"cannot build without isolation here: {built.stderr[-200:]}")
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("inferq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"inferq"}, tops
    for module in (
        "inferq/__init__.py",
        "inferq/producer/client.py",
        "inferq/shared/keys.py",
        "inferq/worker/app.py",
        "inferq/worker/tools/bench.py",
        "inferq/worker/examples/nets.py",
        "inferq/producer/tools/synth.py",
    ):
        assert module in names, module
