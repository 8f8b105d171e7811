"""``run_worker`` with INFERQ_SUPERVISE=0: the Celery worker takes the process's place, so a device
failure's exit code ends the container instead of a supervisor restarting the worker in it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from inferq.worker.supervisor import EXIT_DEVICE_FAILURE

# The stand-in worker prints its pid and exits as a worker does after a device failure.
_CALLER = textwrap.dedent(
    f"""
    import os, sys
    from inferq.worker.supervisor import run_worker
    print(os.getpid(), flush=True)
    worker = [sys.executable, "-c", "import os; print(os.getpid()); raise SystemExit({EXIT_DEVICE_FAILURE})"]
    code = run_worker(worker, dict(os.environ), supervise=False)
    print("run_worker returned", code, flush=True)
    """
)


def test_unsupervised_worker_replaces_the_process_and_keeps_its_exit_code() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CALLER], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT_DEVICE_FAILURE, done.stderr
    caller_pid, worker_pid = done.stdout.split()  # nothing after run_worker ran
    assert caller_pid == worker_pid
