"""Start and stop worker processes from Python (demo, benchmarks, tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import redis

from inferq.shared import keys
from inferq.shared.settings import Settings
from inferq.worker.tuning import worker_env


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    hostname: str
    models: list[str]
    log_path: Path | None

    def wait_ready(self, client: redis.Redis, timeout: float = 120.0) -> None:
        """Until every model lists this worker (published after load, warm-up and checks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if all(
                client.zscore(keys.model_workers_key(m), self.hostname) is not None
                for m in self.models
            ):
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def terminate(self, timeout: float = 60.0) -> int:
        """Warm shutdown; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def start_worker(
    models: Sequence[str],
    env: Mapping[str, str],
    *,
    device: str = "cpu",
    log_path: Path | None = None,
    supervised: bool = True,
    extra: Sequence[str] = (),
    events: bool = True,  # tests watch task events; `inferq worker` itself defaults them off
) -> WorkerProcess:
    """``inferq worker`` (supervised) or the bare Celery worker, with ``env`` added to ours."""
    hostname = f"inferq-{uuid.uuid4().hex[:8]}@localhost"
    if supervised:
        argv = [
            sys.executable,
            "-m",
            "inferq.worker.cli",
            "worker",
            "--device",
            device,
            "--hostname",
            hostname,
        ]
        for m in models:
            argv += ["--model", m]
        if events:
            argv.append("--events")
    else:
        from inferq.worker.supervisor import celery_argv

        argv = celery_argv(models, device, hostname, "INFO", events=events)
    out: IO[bytes] | int = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    child_env = {**os.environ, **env}
    process = subprocess.Popen(
        [*argv, *extra],
        env={**worker_env(Settings.from_env(child_env), child_env), **child_env},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return WorkerProcess(process, hostname, list(models), log_path)
