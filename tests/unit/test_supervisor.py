"""``run_worker`` with INFERQ_SUPERVISE=0: the Celery worker takes the process's place, so a device
failure's exit code ends the container instead of a supervisor restarting the worker in it; and
``ProcessGroup`` (``inferq worker --processes N``): restarts per process, or ends with the first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from inferq.worker.supervisor import (
    EXIT_DEVICE_FAILURE,
    ProcessGroup,
    process_env,
    process_hostname,
)

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


# -- several worker processes (inferq worker --processes N) ----------------------------------------


def test_each_process_is_its_own_node() -> None:
    assert process_hostname("inferq-shapes-cpu-7@host", 0, 1) == "inferq-shapes-cpu-7@host"
    names = [process_hostname("inferq-shapes-cpu-7@host", k, 3) for k in range(3)]
    assert names == [
        "inferq-shapes-cpu-7-p0@host",
        "inferq-shapes-cpu-7-p1@host",
        "inferq-shapes-cpu-7-p2@host",
    ]
    assert process_hostname("plain", 1, 2) == "plain-p1"


def test_processes_share_the_cores_unless_torch_threads_is_set() -> None:
    assert "INFERQ_TORCH_THREADS" not in process_env({}, 1, 0, cores=8)
    assert process_env({}, 2, 0, cores=8)["INFERQ_TORCH_THREADS"] == "4"
    assert process_env({"A": "b"}, 3, 0, cores=8) == {"A": "b", "INFERQ_TORCH_THREADS": "2"}
    assert process_env({}, 4, 0, cores=2)["INFERQ_TORCH_THREADS"] == "1"
    set_by_user = {"INFERQ_TORCH_THREADS": "3"}
    assert process_env(set_by_user, 2, 3, cores=8) == set_by_user


def _child(marker: Path, code: int, *, once: bool = False, after: Path | None = None) -> list[str]:
    """A stand-in worker: records its pid in ``marker``, then exits with ``code`` (the first time
    only, with ``once``: started again, it waits), or waits for SIGTERM and records it. Its
    SIGTERM handler is in place before its pid is written; a failing child waits for ``after``
    (a sibling's marker) first, so that the sibling can be told to stop."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from pathlib import Path
        marker = Path({str(marker)!r})
        def term(*_):
            Path(str(marker) + ".term").write_text("warm")
            sys.exit(0)
        signal.signal(signal.SIGTERM, term)
        starts = marker.read_text().split() if marker.exists() else []
        marker.write_text(" ".join([*starts, str(os.getpid())]))
        if {code} and not ({once} and starts):
            after = {str(after) if after else ""!r}
            while after and not Path(after).exists():
                time.sleep(0.01)
            sys.exit({code})
        while True:
            time.sleep(0.05)
        """
    )
    return [sys.executable, "-c", script]


def _group(tmp_path: Path, codes: list[int], restart: bool, once: bool = False) -> ProcessGroup:
    first = tmp_path / "c0"  # every test's healthy child
    argvs = [
        _child(tmp_path / f"c{i}", c, once=once, after=first if i else None)
        for i, c in enumerate(codes)
    ]
    return ProcessGroup(argvs, [dict(os.environ)] * len(codes), restart, backoff_s=0.1)


def _wait_file(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return path.read_text()


def test_unsupervised_group_ends_with_the_first_child_and_stops_the_others(tmp_path) -> None:
    """INFERQ_SUPERVISE=0: a device failure in one process ends the group with its code, and the
    other process gets a warm shutdown."""
    group = _group(tmp_path, [0, EXIT_DEVICE_FAILURE], restart=False)
    assert group.run() == EXIT_DEVICE_FAILURE
    assert (tmp_path / "c0.term").read_text() == "warm"
    assert len((tmp_path / "c1").read_text().split()) == 1  # not restarted


def test_supervised_group_restarts_a_failed_child_alone(tmp_path) -> None:
    group = _group(tmp_path, [0, EXIT_DEVICE_FAILURE], restart=True, once=True)
    # run() installs SIGTERM/SIGINT handlers, which only the main thread may: it runs here, and
    # a helper thread sends this process the SIGTERM an orchestrator would, once the failed
    # child is back.
    signal_handlers = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    failed: list[BaseException] = []

    def stop_once_restarted() -> None:
        try:
            _wait_until_restarted(tmp_path / "c1")
        except BaseException as exc:  # seen below; the group is stopped either way
            failed.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        waiter = threading.Thread(target=stop_once_restarted)
        waiter.start()
        code = group.run()
        waiter.join()
    finally:
        signal.signal(signal.SIGTERM, signal_handlers[0])
        signal.signal(signal.SIGINT, signal_handlers[1])
    assert not failed, failed
    assert code == 0  # both children shut down warm after the group was told to stop
    assert len((tmp_path / "c0").read_text().split()) == 1  # the healthy one kept running
    assert len((tmp_path / "c1").read_text().split()) == 2  # the failed one, started again
    assert (tmp_path / "c0.term").read_text() == "warm"
    assert (tmp_path / "c1.term").read_text() == "warm"


def _wait_until_restarted(marker: Path) -> None:
    deadline = time.monotonic() + 30
    while len(_wait_file(marker).split()) < 2:
        assert time.monotonic() < deadline, "the failed child was never restarted"
        time.sleep(0.02)


def test_a_group_needs_one_environment_per_process() -> None:
    with pytest.raises(ValueError, match="one environment per worker process"):
        ProcessGroup([["true"], ["true"]], [{}], restart=False)


def test_a_process_that_keeps_failing_ends_the_group(tmp_path) -> None:
    argvs = [
        _child(tmp_path / "c0", 0),
        _child(tmp_path / "c1", EXIT_DEVICE_FAILURE, after=tmp_path / "c0"),
    ]
    group = ProcessGroup(
        argvs, [dict(os.environ)] * 2, restart=True, max_restarts=2, backoff_s=0.05
    )
    assert group.run() == EXIT_DEVICE_FAILURE
    assert len((tmp_path / "c1").read_text().split()) == 3  # the first start and two restarts
    assert (tmp_path / "c0.term").read_text() == "warm"
