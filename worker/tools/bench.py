"""``inferq bench``: the model's own speed and inferq's, side by side in one run.

(a) raw     the model's in-process batched throughput (the same normalisation and forward the
            worker runs), the limit anything around it can reach;
(b) drain   the queue pre-filled with N requests, a worker started: N / time to empty it;
(c) e2e     a producer in another process: ``submit_many`` N, then collect every result;
(d) latency open-loop load at 50% of (c): p50/p95/p99 from submit to result seen by the producer.

Redis is a private server started for the run; the worker is a real ``inferq`` worker process.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from inferq.shared import keys
from inferq.shared.redisconn import make_client
from inferq.shared.settings import Settings, get_settings, set_settings
from inferq.worker.repository import ModelRepository, record_sha256
from inferq.worker.tools.localredis import LocalRedis
from inferq.worker.tools.procs import WorkerProcess, start_worker
from inferq.worker.tools.samples import sample, sample_batch
from inferq.worker.tools.threadcpu import thread_cpu, us_per_message
from inferq.worker.tuning import torch_threads, tune_allocator, tune_threads


@dataclass
class BenchConfig:
    model: str
    batch_size: int
    device: str
    repo: Path
    out: Path
    drain_count: int
    burst_count: int
    steady_seconds: float
    raw_seconds: float = 2.0
    precision: str | None = None  # override the model's precision.mode (fp32, fp16, bf16)
    instances: int | None = None  # override the model's [instances] count
    version: int | None = None  # the version benched (default: the highest, as a worker serves)
    processes: int = 1  # worker processes side by side (`inferq worker --processes`)


@dataclass
class BenchResult:
    config: dict[str, Any]
    machine: dict[str, Any]
    # (a) as the worker computes: the model's instances side by side, cores shared between them
    instances: int = 1
    raw: dict[int, float] = field(default_factory=dict)  # batch size -> images/s
    raw_after: float = 0.0  # the bench batch size again, after (b)-(d): machine drift shows here
    raw_batch_ms: dict[int, float] = field(default_factory=dict)
    # With several instances, also one instance on all cores: the limit is the faster of the two.
    raw_single: dict[int, float] = field(default_factory=dict)
    raw_single_after: float = 0.0
    drain: dict[str, Any] = field(default_factory=dict)
    burst: dict[str, Any] = field(default_factory=dict)
    steady: dict[str, Any] = field(default_factory=dict)

    @property
    def limit(self) -> float:
        """The reference for every ratio: raw throughput at the bench batch size, measured before
        and after the queue runs, averaged, so that drift of a shared machine hits both sides;
        with several instances, the faster of the instances and of one instance on all cores."""
        size = self.config["batch_size"]
        best = _mean(self.raw[size], self.raw_after)
        if self.raw_single:
            best = max(best, _mean(self.raw_single[size], self.raw_single_after))
        return best

    def ratios(self) -> dict[str, float]:
        limit = self.limit
        return {
            "drain": self.drain["throughput"] / limit,
            "end_to_end": self.burst["throughput"] / limit,
        }


def _mean(before: float, after: float) -> float:
    return (before + after) / 2 if after else before


def machine_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def bench_repo(cfg: BenchConfig, into: Path) -> Path:
    """A copy of the model version benched, alone in a repository of its own, whose batching is
    pinned to the benchmark's batch size. The version's own config.toml (an optimised version's
    platform, precision and ``[optimize]``) is the copy's config when it has one."""
    src = ModelRepository(cfg.repo).resolve(cfg.model, cfg.version)
    dest = into / cfg.model / str(src.version)
    dest.mkdir(parents=True)
    shutil.copy2(src.path, dest / src.path.name)
    record_sha256(dest / src.path.name)
    (into / cfg.model / "config.toml").write_text(bench_config_text(cfg, src.path.parent))
    return into


def bench_config_text(cfg: BenchConfig, version_dir: Path) -> str:
    """The config the bench copy runs under: the version's own, else the model's, with the
    benchmark's batch size and the overrides asked for."""
    own = version_dir / "config.toml"
    text = (own if own.is_file() else version_dir.parent / "config.toml").read_text()
    text = re.sub(r"(?m)^max_batch_size\s*=.*$", f"max_batch_size = {cfg.batch_size}", text)
    text = re.sub(
        r"(?m)^preferred_batch_sizes\s*=.*$", f"preferred_batch_sizes = [{cfg.batch_size}]", text
    )
    text = re.sub(r"(?m)^queue_limit\s*=.*$", "queue_limit = 1000000", text)
    if cfg.precision:
        text = re.sub(r"(?m)^mode\s*=.*$", f'mode = "{cfg.precision}"', text)
    if cfg.instances:
        text = re.sub(r"(?ms)^\[instances\].*?(?=^\[|\Z)", "", text)
        text += f"\n[instances]\ncount = {cfg.instances}\n"
    return text


def raw_throughput(
    repo: Path, model: str, device: str, sizes: list[int], seconds: float, instances: int = 1
) -> tuple[dict[int, float], dict[int, float]]:
    """Images/s and ms per batch at each size: the worker's forward (normalisation included) in
    a loop, on ``instances`` threads at once, with nothing else in the process."""
    import torch

    from inferq.worker.handlers import load_handler
    from inferq.worker.runner import Runner

    mv = ModelRepository(repo).resolve(model)
    dev = torch.device(device)
    runner = Runner(load_handler(mv, dev), mv.config, mv.version, dev, "bench")
    per_s: dict[int, float] = {}
    batch_ms: dict[int, float] = {}
    for size in sizes:
        x = sample_batch(runner.config, size).to(dev)
        calls, elapsed = _timed_loops(partial(runner._forward, x), seconds, instances)
        per_s[size] = calls * size / elapsed
        batch_ms[size] = elapsed / (calls / instances) * 1e3
    return per_s, batch_ms


def _timed_loops(step: Callable[[], Any], seconds: float, instances: int) -> tuple[int, float]:
    """Calls of ``step`` made in about ``seconds`` by ``instances`` threads at once, each warmed
    up first, and the seconds they took."""
    if instances == 1:  # on the calling thread, whose OpenMP team is already warm
        for _ in range(3):
            step()
        return _loop(step, seconds)
    ready = threading.Barrier(instances + 1)
    calls = [0] * instances

    def run(i: int) -> None:
        for _ in range(3):
            step()
        ready.wait()
        calls[i] = _loop(step, seconds)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(instances)]
    for t in threads:
        t.start()
    ready.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return sum(calls), time.perf_counter() - started


def _loop(step: Callable[[], Any], seconds: float) -> tuple[int, float]:
    count, started = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - started < seconds:
        step()
        count += 1
    return count, time.perf_counter() - started


class _RawMeter:
    """``raw_throughput`` with the thread count the worker would use for that many instances."""

    def __init__(self, repo: Path, cfg: BenchConfig, torch_threads_setting: int) -> None:
        import torch

        self.repo, self.cfg, self.setting = repo, cfg, torch_threads_setting
        tune_threads(torch_threads_setting)
        self.all_cores = torch.get_num_threads()

    def __call__(
        self, instances: int, sizes: list[int], seconds: float
    ) -> tuple[dict[int, float], dict[int, float]]:
        import torch

        device_type = self.cfg.device.split(":")[0]
        threads = torch_threads(self.setting, device_type, instances) or self.all_cores
        torch.set_num_threads(threads)
        return raw_throughput(self.repo, self.cfg.model, self.cfg.device, sizes, seconds, instances)


def _loadgen(env: dict[str, str], *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "inferq.producer.tools.loadgen", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _drain(
    cfg: BenchConfig, redis_url: str, redis_pid: int | None, env: dict[str, str], log: Path
) -> tuple[dict[str, Any], list[WorkerProcess]]:
    """(b): ``drain_count`` requests queued, the workers started with the queue set aside (so
    that with several processes none starts early), then timed from the queue's return until
    nothing is queued or unacked."""
    from inferq.producer.client import reset_runtime, submit_many
    from inferq.worker.supervisor import process_env

    client = make_client(redis_url)
    mv = ModelRepository(Path(env["INFERQ_MODEL_REPOSITORY"])).resolve(cfg.model)
    client.set(keys.model_spec_key(cfg.model), mv.config.input_spec(mv.version).to_json())
    reset_runtime()
    rng = np.random.default_rng(1)
    pool = [sample(mv.config, rng) for _ in range(64)]
    submit_many((pool[i % 64] for i in range(cfg.drain_count)), model=cfg.model, chunk=512)
    queue = keys.queue_name(cfg.model)
    parked = [k for k in keys.queue_keys(queue) if client.exists(k)]
    for key in parked:
        client.rename(key, f"{key}.parked")
    workers: list[WorkerProcess] = []
    try:
        for k in range(cfg.processes):
            workers.append(
                start_worker(
                    [cfg.model],
                    process_env(env, cfg.processes, Settings.from_env().torch_threads),
                    device=cfg.device,
                    log_path=log if k == 0 else log.with_name(f"{log.stem}-{k}{log.suffix}"),
                    supervised=False,
                    events=False,
                )
            )
        for worker in workers:
            _wait_listed(client, worker)
    except BaseException:
        for worker in workers:
            worker.terminate()
        raise
    pids = {"worker": [w.process.pid for w in workers], "redis": [redis_pid] if redis_pid else []}
    cpu_before = {k: _cpu_of(p) for k, p in pids.items()}
    started = time.perf_counter()
    for key in parked:  # a list's return wakes the workers blocked on it
        client.rename(f"{key}.parked", key)
    while client.exists(*keys.queue_keys(queue)) or client.hlen(keys.UNACKED):
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    cpu = {
        k: us_per_message(cpu_before[k], _cpu_of(p), cfg.drain_count) for k, p in pids.items() if p
    }
    return {
        "count": cfg.drain_count,
        "seconds": elapsed,
        "throughput": cfg.drain_count / elapsed,
        "processes": cfg.processes,
        "cpu_us_per_message": cpu,
    }, workers


def _cpu_of(pids: list[int]) -> dict[str, float]:
    """CPU seconds by thread name, summed over ``pids`` (the worker processes)."""
    total: dict[str, float] = {}
    for pid in pids:
        for name, seconds in thread_cpu(pid).items():
            total[name] = total.get(name, 0.0) + seconds
    return total


def _wait_listed(client: Any, worker: WorkerProcess) -> float:
    deadline = time.monotonic() + 300
    while client.zscore(keys.model_workers_key(worker.models[0]), worker.hostname) is None:
        if worker.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{worker.log_tail()}")
        time.sleep(0.002)
    return time.perf_counter()


def run_bench(cfg: BenchConfig, echo: Any = print) -> BenchResult:
    cfg.out.mkdir(parents=True, exist_ok=True)
    result = BenchResult(
        config={**asdict(cfg), "repo": str(cfg.repo), "out": str(cfg.out)},
        machine=machine_info(cfg.device),
    )
    tmp = Path(tempfile.mkdtemp(prefix="inferq-bench-"))
    repo = bench_repo(cfg, tmp / "repo")
    # The model's raw speed is measured as the worker runs it: same allocator, same threads.
    settings = get_settings()
    tune_allocator(settings.malloc_mmap_threshold_mb)
    raw = _RawMeter(repo, cfg, settings.torch_threads)
    result.instances = ModelRepository(repo).resolve(cfg.model).config.instances
    sizes = sorted({1, *[2**i for i in range(1, 12) if 2**i < cfg.batch_size], cfg.batch_size})
    echo(
        f"(a) raw in-process throughput at batch sizes {sizes}, {result.instances} instance(s) ..."
    )
    result.raw, result.raw_batch_ms = raw(result.instances, sizes, cfg.raw_seconds)
    if result.instances > 1:
        echo("(a) raw, one instance on all cores ...")
        result.raw_single = raw(1, [cfg.batch_size], cfg.raw_seconds)[0]
    redis = LocalRedis().start()
    previous = get_settings()
    set_settings(Settings(broker_url=redis.url, model_repository=repo, metrics_port=0))
    env = {
        "INFERQ_BROKER_URL": redis.url,
        "INFERQ_MODEL_REPOSITORY": str(repo),
        "INFERQ_METRICS_PORT": "0",
        "INFERQ_LOG_LEVEL": "WARNING",
    }
    workers: list[WorkerProcess] = []
    try:
        echo(
            f"(b) drain: {cfg.drain_count} requests pre-filled, then {cfg.processes} worker "
            "process(es) started ..."
        )
        result.drain, workers = _drain(
            cfg, redis.url, redis.process.pid if redis.process else None, env, tmp / "worker.log"
        )
        echo(f"(c) end-to-end burst: {cfg.burst_count} requests from another process ...")
        result.burst = _loadgen(env, "burst", "--model", cfg.model, "--count", str(cfg.burst_count))
        rate = result.burst["throughput"] / 2
        echo(f"(d) latency at {rate:.0f} requests/s for {cfg.steady_seconds:g} s ...")
        result.steady = _loadgen(
            env,
            "steady",
            "--model",
            cfg.model,
            "--rate",
            str(rate),
            "--seconds",
            str(cfg.steady_seconds),
        )
    finally:
        for worker in workers:
            worker.terminate()
        redis.stop()
        set_settings(previous)
    echo("(a) raw again, to average out drift ...")
    result.raw_after = raw(result.instances, [cfg.batch_size], cfg.raw_seconds * 2)[0][
        cfg.batch_size
    ]
    if result.instances > 1:
        result.raw_single_after = raw(1, [cfg.batch_size], cfg.raw_seconds * 2)[0][cfg.batch_size]
    write_outputs(result, cfg, repo)
    echo(render(result, cfg, repo))
    return result


def latency_bound_ms(result: BenchResult, cfg: BenchConfig, repo: Path) -> float:
    """The issue's target: p99 <= max_wait_ms + 3 x the compute time of the batch size served."""
    mv = ModelRepository(repo).resolve(cfg.model)
    mean_batch = max(1, round(result.burst.get("mean_batch", 1)))
    size = min(result.raw_batch_ms, key=lambda s: abs(s - mean_batch))
    return mv.config.batching.max_wait_ms + 3 * result.raw_batch_ms[size]


def render(result: BenchResult, cfg: BenchConfig, repo: Path) -> str:
    r = result.ratios()
    raw = result.limit
    lat = result.steady.get("latency_ms", {})
    bound = latency_bound_ms(result, cfg, repo)
    lines = [
        f"inferq bench: model {cfg.model}, batch size {cfg.batch_size}, device {cfg.device}, "
        f"{result.machine['cpu_count']} CPUs, torch {result.machine['torch']}",
        f"{'':34}{'images/s':>12}{'x raw':>9}",
        f"{'(a) raw in-process, batch ' + str(cfg.batch_size):34}{raw:>12.0f}{1.0:>9.2f}"
        f"   ({result.instances} instance(s): before {result.raw[cfg.batch_size]:.0f}, "
        f"after {result.raw_after:.0f}"
        + (
            f"; one instance on all cores: before {result.raw_single[cfg.batch_size]:.0f}, "
            f"after {result.raw_single_after:.0f}"
            if result.raw_single
            else ""
        )
        + ")",
        f"{'(b) drain, ' + str(cfg.drain_count) + ' queued' + _processes(cfg):34}{result.drain['throughput']:>12.0f}{r['drain']:>9.2f}",
        _cpu_line(result.drain.get("cpu_us_per_message", {})),
        f"{'(c) end-to-end burst, ' + str(cfg.burst_count):34}{result.burst['throughput']:>12.0f}{r['end_to_end']:>9.2f}",
        f"(d) latency at {result.steady.get('rate', 0):.0f} req/s (50% of c): "
        f"p50 {lat.get('p50', float('nan')):.1f} ms, p95 {lat.get('p95', float('nan')):.1f} ms, "
        f"p99 {lat.get('p99', float('nan')):.1f} ms "
        f"(bound max_wait + 3 x batch compute = {bound:.1f} ms)",
        _tail_line(result.steady.get("slowest_1pct_timing_ms", {})),
        f"mean batch size: drain-free burst {result.burst.get('mean_batch', 0):.1f}",
        "raw by batch size: " + ", ".join(f"{s}: {v:.0f}/s" for s, v in result.raw.items()),
        f"written: {cfg.out / 'bench.json'}, {cfg.out / 'bench.png'}",
    ]
    return "\n".join(lines)


def _tail_line(timing: dict[str, float]) -> str:
    """Where the slowest 1% of (d) spent their time, by their results' own timing."""
    if not timing:
        return "    slowest 1% of (d): no timings"
    parts = ", ".join(f"{k[:-3]} {v:.1f}" for k, v in timing.items() if k.endswith("_ms"))
    return f"    slowest 1% of (d), mean ms: {parts}; batch size {timing.get('batch_size', 0):.1f}"


def _processes(cfg: BenchConfig) -> str:
    return f", {cfg.processes} procs" if cfg.processes > 1 else ""


def _cpu_line(cpu: dict[str, dict[str, float]]) -> str:
    threads = cpu.get("worker", {})
    parts = ", ".join(f"{name} {us:.1f}" for name, us in threads.items() if us >= 0.5)
    return (
        f"    CPU per message in the drain: worker {sum(threads.values()):.1f} us ({parts}); "
        f"redis {sum(cpu.get('redis', {}).values()):.1f} us"
    )


def write_outputs(result: BenchResult, cfg: BenchConfig, repo: Path) -> None:
    data = asdict(result)
    data["ratios"] = result.ratios()
    data["latency_bound_ms"] = latency_bound_ms(result, cfg, repo)
    (cfg.out / "bench.json").write_text(json.dumps(data, indent=2, default=str))
    plot(result, cfg, cfg.out / "bench.png")


def plot(result: BenchResult, cfg: BenchConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    lat = np.array(result.steady.get("latency_sorted_ms", []))
    if len(lat):
        left.plot(lat, np.arange(1, len(lat) + 1) / len(lat))
    left.set_xlabel("latency, submit to result (ms)")
    left.set_ylabel("fraction of requests")
    left.set_title(f"latency CDF at {result.steady.get('rate', 0):.0f} req/s")
    left.grid(alpha=0.3)
    sizes = list(result.raw)
    right.plot(sizes, [result.raw[s] for s in sizes], marker="o", label="(a) raw in-process")
    right.scatter(
        [cfg.batch_size], [result.drain["throughput"]], color="C1", label="(b) drain", zorder=3
    )
    right.scatter(
        [cfg.batch_size], [result.burst["throughput"]], color="C2", label="(c) end-to-end", zorder=3
    )
    right.set_xscale("log", base=2)
    right.set_xlabel("batch size")
    right.set_ylabel("images/s")
    right.set_title(f"{cfg.model} on {cfg.device}")
    right.legend()
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
