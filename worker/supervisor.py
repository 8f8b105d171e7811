"""``inferq worker``: runs the Celery worker in a child process and restarts it when it must.

The child imports torch and touches the device; this parent does neither, so CUDA is only ever
initialised in the process that uses it. A child that exits after an unrecoverable device error
(exit code 75), or dies to a signal it was not sent by us, is started again after a short backoff.
SIGTERM/SIGINT are passed on to the child as SIGTERM: a warm shutdown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType

from inferq.shared import keys
from inferq.shared.logs import get_logger

log = get_logger(__name__)

EXIT_DEVICE_FAILURE = 75


def celery_argv(
    models: Sequence[str], device: str, hostname: str, loglevel: str, events: bool
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "inferq.worker.app",
        "worker",
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "-Q",
        keys.ADMIN_QUEUE,
        "--hostname",
        hostname,
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        "--inferq-device",
        device,
    ]
    if events:
        argv.append("--task-events")
    for model in models:
        argv += ["--inferq-model", model]
    return argv


def default_hostname(models: Sequence[str], device: str) -> str:
    tag = "-".join(models)[:40]
    return f"inferq-{tag}-{device.replace(':', '')}-{os.getpid()}@{socket.gethostname()}"


def run_worker(argv: list[str], env: Mapping[str, str], supervise: bool) -> int:
    """Run the Celery worker under a :class:`Supervisor`, or (``supervise`` false) in this
    process's place, so that its exit code, a device failure's included, is the process's own."""
    if supervise:
        return Supervisor(argv, env=env).run()
    os.execve(argv[0], argv, env)  # no return: signals reach Celery directly


class Supervisor:
    def __init__(
        self,
        argv: list[str],
        max_restarts: int = 100,
        backoff_s: float = 1.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = argv
        self.env = dict(env) if env is not None else None  # None: the child inherits ours
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        restarts = 0
        while True:
            if self.stopping:  # told to stop during the backoff: start nothing new
                return 0
            self.child = subprocess.Popen(self.argv, env=self.env)
            if self.stopping:  # the signal came while the child was starting: pass it on
                self.child.send_signal(signal.SIGTERM)
            code = self.child.wait()
            if self.stopping or not self._should_restart(code):
                return code
            restarts += 1
            if restarts > self.max_restarts:
                log.error("worker keeps failing; giving up", restarts=restarts, exit_code=code)
                return code
            log.warning("worker exited; restarting", exit_code=code, restarts=restarts)
            time.sleep(self.backoff_s)

    @staticmethod
    def _should_restart(code: int) -> bool:
        return code == EXIT_DEVICE_FAILURE or code < 0 or code not in (0, 1, 2)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        if self.child and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)
