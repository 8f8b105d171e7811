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


def process_hostname(hostname: str, index: int, count: int) -> str:
    """The node name of worker process ``index`` of ``count`` started together: ``name-pK@host``
    (the name as given when there is one process)."""
    if count == 1:
        return hostname
    name, at, host = hostname.partition("@")
    return f"{name}-p{index}{at}{host}"


def process_env(
    env: Mapping[str, str], count: int, torch_threads: int, cores: int | None = None
) -> dict[str, str]:
    """A worker process's environment when ``count`` share the host: unless ``torch_threads``
    (``INFERQ_TORCH_THREADS``) is set, each gets its share of the cores for torch's threads, so
    that the processes' thread pools do not oversubscribe them."""
    out = dict(env)
    if count > 1 and torch_threads == 0:
        out["INFERQ_TORCH_THREADS"] = str(max(1, (cores or _cores()) // count))
    return out


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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


class ProcessGroup:
    """Several worker processes side by side (``inferq worker --processes N``), as Celery's
    prefork pool runs several on one host: each is its own Celery node, with its own GIL,
    fetcher, batcher and run threads, so the Python around the model runs on every core at
    once instead of taking turns under one GIL.

    With ``restart``, a child that fails is restarted alone, as :class:`Supervisor` restarts its
    one; without it (``INFERQ_SUPERVISE=0``), or once a child ends in a way that is not restarted,
    the others are stopped (a warm shutdown) and that child's exit code is the group's, so that
    the container ends and its orchestrator decides. SIGTERM/SIGINT reach every child as SIGTERM.
    """

    def __init__(
        self,
        argvs: Sequence[list[str]],
        envs: Sequence[Mapping[str, str]],
        restart: bool,
        max_restarts: int = 100,
        backoff_s: float = 1.0,
        poll_s: float = 0.1,
    ) -> None:
        if len(argvs) != len(envs) or not argvs:
            raise ValueError("one environment per worker process, and at least one process")
        self.argvs = list(argvs)
        self.envs = [dict(e) for e in envs]
        self.restart = restart
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self.poll_s = poll_s
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self._told: set[int] = set()  # pids sent SIGTERM: once each (a warm shutdown)
        self._restarts: list[int] = []
        self._due: dict[int, float] = {}
        self._code = 0
        self.stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        self._restarts = [0] * len(self.argvs)
        self._due = {i: 0.0 for i in range(len(self.argvs))}  # when each child is to start
        self._code = 0
        while self.children or (self._due and not self.stopping):
            self._start_due()
            for i, child in list(self.children.items()):
                exit_code = child.poll()
                if exit_code is not None:
                    del self.children[i]
                    self._exited(i, exit_code)
            time.sleep(self.poll_s)
        return self._code

    def _start_due(self) -> None:
        if self.stopping:  # a signal may have come while a child was starting
            self._due.clear()
            self._signal_all()
            return
        now = time.monotonic()
        for i in [i for i, at in self._due.items() if at <= now]:
            del self._due[i]
            self.children[i] = subprocess.Popen(self.argvs[i], env=self.envs[i])

    def _exited(self, i: int, exit_code: int) -> None:
        """Child ``i`` ended: restart it, or end the group with its code."""
        if self.stopping:
            self._code = self._code or exit_code
            return
        if self.restart and Supervisor._should_restart(exit_code):
            self._restarts[i] += 1
            if self._restarts[i] <= self.max_restarts:
                log.warning(
                    "worker process exited; restarting",
                    process=i,
                    exit_code=exit_code,
                    restarts=self._restarts[i],
                )
                self._due[i] = time.monotonic() + self.backoff_s
                return
            log.error("worker process keeps failing", process=i, restarts=self._restarts[i])
        if exit_code:
            log.error("worker process ended; stopping the others", process=i, exit_code=exit_code)
        self._end(exit_code)

    def _end(self, exit_code: int) -> None:
        self.stopping = True
        self._code = exit_code
        self._due.clear()
        self._signal_all()

    def _signal_all(self) -> None:
        for child in list(self.children.values()):
            if child.pid not in self._told and child.poll() is None:
                self._told.add(child.pid)
                child.send_signal(signal.SIGTERM)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        self._signal_all()
