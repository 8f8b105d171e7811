"""The inference service: per served model, a fetcher thread, a prepare thread and one run
thread per instance (``[instances] count`` on CPU, one on a GPU); one writer and one housekeeping thread.

    Redis --Fetcher (bulk, recorded as unacked)--> decode/validate --> MicroBatcher
          --> prepare (staged on the device) --> Runner --> ResultWriter
          --(results + acks, one script call)--> Redis

The stages overlap: while batch k runs on the device, batch k+1 is fetched, decoded and staged
and the results of batch k-1 are written and acknowledged. Messages a worker holds are bounded
(``max_batch_size * (prefetch_batches + 1)`` per model) and counted from fetch to ack. This
module owns the lifecycle, loading, and the device loops (prepare, run, device failure); the
fetcher, writer and housekeeping live in their own modules.

Stop order (warm shutdown): stop fetching, put held-but-unstarted messages back on their queues,
let each runner finish the batch in hand, write and ack those results, stop.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial
from queue import Empty
from typing import Any

import redis
import torch

from inferq.shared import keys
from inferq.shared.errors import ConfigError
from inferq.shared.logs import bind_thread, bound, get_logger
from inferq.shared.redisconn import make_client
from inferq.shared.registry import Registry
from inferq.shared.settings import Settings
from inferq.shared.spec import InputSpec
from inferq.worker.batcher import BatchPolicy, MicroBatcher
from inferq.worker.broker import Broker
from inferq.worker.checks import check_settings, for_device
from inferq.worker.fetcher import Fetcher
from inferq.worker.handlers import ModelHandler, load_handler
from inferq.worker.health import Health
from inferq.worker.hooks import Hooks
from inferq.worker.housekeeping import Housekeeping
from inferq.worker.inhand import InHand, give_back
from inferq.worker.intake import InferenceRequest
from inferq.worker.preflight import preflight
from inferq.worker.repository import ModelRepository, ModelVersion
from inferq.worker.revoked import split_revoked
from inferq.worker.runner import (
    Deferred,
    DeviceFailure,
    Outcome,
    PreparedBatch,
    Runner,
    StagingFailed,
    unrecoverable,
)
from inferq.worker.served import FailureCount, FetchLoop, Served
from inferq.worker.supervisor import EXIT_DEVICE_FAILURE
from inferq.worker.tuning import name_os_thread, torch_threads, tune_threads
from inferq.worker.versions import VersionManager, initial_versions
from inferq.worker.writer import ResultWriter, WriteJob

log = get_logger(__name__)


HandlerLoader = Callable[[ModelVersion, torch.device], ModelHandler]
#: Checks a freshly loaded version on its run thread before it takes requests (raises if unfit).
Validator = Callable[[Runner, ModelVersion], None]


class InferenceService:
    def __init__(
        self,
        settings: Settings,
        models: Sequence[str],
        device: str,
        *,
        worker_name: str | None = None,
        hooks: Hooks | None = None,
        health: Health | None = None,
        handler_loader: HandlerLoader = load_handler,
        on_fatal: Callable[[int], None] = os._exit,
    ) -> None:
        if not models:
            raise ConfigError("a worker must serve at least one model: pass --model NAME")
        self.settings = settings
        self.model_names = list(models)
        self.device = torch.device(device)
        self.worker_name = worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self.hooks = hooks or Hooks([])
        self.health = health or Health(settings.liveness_s)
        self._load_handler = handler_loader
        self._on_fatal = on_fatal
        self.served: list[Served] = []
        self._stopping = threading.Event()
        self._fatal = threading.Event()
        self._fatal_lock = threading.Lock()
        # Batches computing at once on the device: one per instance of the largest model.
        self._compute_slots = threading.Semaphore(1)
        self._threads: list[threading.Thread] = []
        self._writer_thread: threading.Thread | None = None
        self._versions_thread: threading.Thread | None = None
        self.client: redis.Redis = make_client(settings.broker_url)
        results = (
            self.client
            if settings.result_backend == settings.broker_url
            else make_client(settings.result_backend)
        )
        self.broker = Broker(
            self.client, results, settings.result_ttl_s, make_client(settings.broker_url, retries=0)
        )
        self.writer = ResultWriter(self.broker, self.hooks)
        # Its specs are the served models', set once they are loaded (start).
        self.housekeeping = Housekeeping(
            self.broker, settings, self.hooks, self.worker_name, self.device, ()
        )
        self.registry = Registry(self.client, actor=self.worker_name)
        self.repository = ModelRepository(settings.model_repository)
        self.versions = VersionManager(self, self.registry, self.repository, settings)
        self.housekeeping.on_beat = self.versions.wake  # the policy, re-read every heartbeat

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        # The stages hand work to each other through the GIL; with the default 5 ms switch
        # interval a runner coming back from the device can wait that long for a decoding
        # fetcher. A shorter interval keeps the device fed.
        sys.setswitchinterval(self.settings.switch_interval_s)
        preflight(self.settings.broker_url, str(self.device))  # before any model loads
        self.health.expect(self.model_names)
        initial = initial_versions(self.registry, self.repository, self.model_names)
        models = for_device(initial, self.device)
        instances = sum(m.config.instances for m in models)
        self._compute_slots = threading.Semaphore(max(m.config.instances for m in models))
        # malloc is tuned earlier, before any thread exists (inferq.worker.app, or the child's env).
        tune_threads(torch_threads(self.settings.torch_threads, self.device.type, instances))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # CUDA is first touched here, after the fork
        served = self._start_run_threads(models)
        try:
            check_settings(self.settings, served)
        except ConfigError:
            for s in served:
                s.end_runs()  # nothing was fetched: the run threads just end
            raise
        self._writer_thread = self._spawn("inferq-writer", self.writer.run)
        for s in served:
            self.activate(s)
            self.open_queue(s, keys.version_queue_name(s.model.name, s.version))
            self.open_queue(s, keys.queue_name(s.model.name))
        self.housekeeping.publish_specs()
        self.health.published()
        self.housekeeping.on_round = self._progress  # polling loops report each round to /live
        self.housekeeping.in_hand = self._in_hand_by_model
        self.housekeeping.ready = lambda: self.health.readiness().ok
        self._spawn("inferq-housekeeping", self.housekeeping.run, self._stopping)
        self._versions_thread = self._spawn("inferq-versions", self.versions.run, self._stopping)
        log.info(
            "worker serving",
            models=[s.label for s in self.served],
            device=str(self.device),
            worker=self.worker_name,
        )

    def stop(self, timeout: float = 60.0) -> None:
        """Warm shutdown: nothing lost, nothing computed twice."""
        if self._stopping.is_set():
            return
        log.info("warm shutdown: finishing the batches in hand")
        self.health.draining()
        self._stopping.set()
        if self._versions_thread is not None:  # no version starts or ends from here on
            self._versions_thread.join(timeout)
        served = list(self.served)
        for s in served:
            s.stop_fetching(timeout=timeout)
        for s in served:
            s.batcher.close()
            self._give_back(s, s.unstarted())
        for s in served:
            for t in s.threads:
                t.join(timeout)
        self.writer.close()
        for t in self._threads:
            t.join(timeout)
        self.housekeeping.unpublish()
        self.hooks.on_stop()
        log.info("worker stopped")

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        def run() -> None:
            name_os_thread(name)  # top -H, py-spy and /proc show which stage is which
            bind_thread(worker=self.worker_name)
            try:
                target(*args)
            finally:
                self.health.forget(name)  # a loop that ended is no longer watched for progress

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()]  # retired versions' are done
        self._threads.append(thread)
        return thread

    # -- versions (worker/versions.py decides which; these do it) --------------------------------

    def load_version(self, model: ModelVersion, validate: Validator) -> Served:
        """Load, warm up and validate ``model`` on a run thread of its own beside the versions
        serving; it takes no request before ``activate`` and ``open_queue``. Raises what failed."""
        [model] = for_device([model], self.device)  # the instance rules of this device kind
        future: Future[Served] = Future()
        self._spawn(
            f"inferq-run-{model.name}@{model.version}", self._device_thread, model, future, validate
        )
        s = future.result()
        try:
            check_settings(self.settings, [s])
        except ConfigError:
            s.end_runs()
            raise
        return s

    def activate(self, s: Served) -> None:
        """Start closing and staging ``s``'s batches; it computes what its queues bring."""
        s.threads.append(self._spawn(f"inferq-prepare-{s.label}", self._prepare_loop, s))
        self.served = [*self.served, s]  # copied, never changed in place: readers iterate it

    def open_queue(self, s: Served, queue: str, spec: InputSpec | None = None) -> None:
        """Fetch ``queue`` into ``s``, decoding against ``spec`` (default: ``s``'s own)."""
        stop = threading.Event()
        fetcher = Fetcher(
            self.broker,
            self.settings,
            spec or s.spec,
            s.batcher,
            s.in_hand,
            self.writer,
            self.hooks,
            stop,
            queue,
        )
        fetcher.on_round = self._progress
        s.fetches[queue] = FetchLoop(
            fetcher, stop, self._spawn(f"inferq-fetch-{queue}", fetcher.run)
        )
        self._refresh_specs()

    def close_queue(self, s: Served, queue: str) -> None:
        """Stop fetching ``queue`` into ``s``; what it took is computed by ``s``."""
        s.stop_fetching([queue])
        self._refresh_specs()

    def retire(self, s: Served, timeout: float = 60.0) -> None:
        """Release ``s``: stop its fetching, compute what it holds, end its threads. Its handler
        goes with the last reference to ``s`` (``free_device_memory`` then returns the memory)."""
        s.stop_fetching(timeout=timeout)
        self._give_back(s, s.take_delayed())
        s.retiring.set()
        for t in s.threads:
            t.join(timeout)
        self.served = [x for x in self.served if x is not s]
        self._refresh_specs()
        self.hooks.on_model_released(s.model.name, s.model.version)

    def free_device_memory(self) -> None:
        gc.collect()  # the released handler's tensors, before the allocator hands memory back
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _in_hand_by_model(self) -> dict[str, int]:
        """Messages held per model, its versions together (the in-hand gauge)."""
        held: dict[str, int] = {}
        for s in self.served:
            held[s.model.name] = held.get(s.model.name, 0) + s.in_hand.count
        return held

    def _refresh_specs(self) -> None:
        """The specs housekeeping publishes: each model's serving version (the one fetching the
        unversioned queue, which older producers and foreign clients preprocess for)."""
        self.housekeeping.specs = [
            s.spec for s in self.served if keys.queue_name(s.model.name) in s.fetches
        ]

    def _start_run_threads(self, models: Sequence[ModelVersion]) -> list[Served]:
        """A run thread per model, which loads and warms the model up itself, starts the run
        threads of the model's other instances, then computes its batches. With one instance,
        every torch call of the model happens on that one thread: on CPU each thread that
        enters torch's parallel regions gets its own OpenMP team, and a second team (say, one
        left from a warm-up on the main thread) measurably slows the one that computes (about
        15% on ResNet-18 with two cores here), as its idle workers and the active ones contend
        for the same cores. Several instances share the module and the cores are shared out
        between them (one intra-op thread each on two cores), so there is no team to contend."""
        loaded: list[Future[Served]] = []
        for model in models:
            future: Future[Served] = Future()
            self._spawn(f"inferq-run-{model.name}", self._device_thread, model, future)
            loaded.append(future)
        served: list[Served] = []
        failure: BaseException | None = None
        for future in loaded:
            try:
                served.append(future.result())
            except BaseException as exc:  # the first failure is raised once all have settled
                failure = failure or exc
        if failure is not None:
            for s in served:
                s.end_runs()
            raise failure
        return served

    def _device_thread(
        self, model: ModelVersion, future: Future[Served], validate: Validator | None = None
    ) -> None:
        bind_thread(model=model.name)
        try:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # the current device is per thread
            s = self._load(model)
            if validate is not None:  # on this thread, like every torch call of the model
                validate(s.runner, model)
        except BaseException as exc:
            future.set_exception(exc)
            return
        s.threads.append(threading.current_thread())
        for i in range(1, model.config.instances):  # the model's other instances, loaded above
            s.threads.append(self._spawn(f"inferq-run-{s.label}-{i}", self._run_loop, s))
        c = model.config
        self.hooks.on_model_loaded(model.name, model.version, c.platform, c.precision.mode)
        self.health.loaded(model.name)
        future.set_result(s)
        self._run_loop(s)

    def _load(self, model: ModelVersion) -> Served:
        started = time.perf_counter()
        handler = self._load_handler(model, self.device)
        runner = Runner(
            handler,
            model.config,
            model.version,
            self.device,
            self.worker_name,
            on_cap_change=partial(self.hooks.on_batch_cap, model.name, model.version),
        )
        warmup = runner.warmup()
        log.info(
            "model loaded",
            model=model.name,
            version=model.version,
            seconds=round(time.perf_counter() - started, 3),
            warmup_s={k: round(v, 4) for k, v in warmup.items()},
        )
        b = model.config.batching
        batcher: MicroBatcher[InferenceRequest] = MicroBatcher(
            BatchPolicy(b.max_batch_size, b.max_wait_ms / 1e3, b.preferred_batch_sizes)
        )
        in_hand = InHand(b.max_batch_size * (self.settings.prefetch_batches + 1))
        spec = model.config.input_spec(model.version)
        failures = FailureCount(model.config.rollout.canary_min_requests)
        return Served(model, spec, runner, batcher, in_hand, warmup, failures)

    # -- run ---------------------------------------------------------------------------------

    def _prepare_loop(self, s: Served) -> None:
        """Close batches and stage them on the device while the previous batch computes."""
        bind_thread(model=s.model.name)
        while not self._fatal.is_set():
            self._progress()
            batch = s.batcher.next_batch(timeout=0.1, cap=s.runner.cap.value)
            if not batch:
                if (self._stopping.is_set() or s.retiring.is_set()) and len(s.batcher) == 0:
                    break
                continue
            self._prepare(s, batch)
        s.end_runs()

    def _prepare(self, s: Served, batch: list[InferenceRequest]) -> None:
        batch, revoked = split_revoked(batch)  # revoked while waiting here: never computed
        if revoked:
            self.writer.put(WriteJob(s.model.name, s.model.version, s.in_hand, (), revoked))
        if not batch:
            return
        try:
            staged = s.runner.stage(batch)
        except DeviceFailure as exc:
            self._device_failed(s, batch, exc)
            return
        if isinstance(staged, PreparedBatch):
            s.ready.put(staged)
        elif isinstance(staged, Deferred):  # the runner lowered its cap: same requests, smaller
            s.batcher.put_front(staged.requests)
        elif isinstance(staged, StagingFailed):
            self._write(s, staged.outcomes)

    def _run_loop(self, s: Served) -> None:
        bind_thread(model=s.model.name)
        while (prepared := self._next_prepared(s)) is not None:
            if self._fatal.is_set():  # the device is gone: hand the staged batch back untouched
                self._give_back(s, prepared.requests)
                continue
            if not self._runs_unrevoked(s, prepared):
                continue
            # The version per batch, not per loop: a reload swaps it between batches.
            with bound(batch_id=uuid.uuid4().hex[:16], version=s.model.version):
                self._run_batch(s, prepared)

    def _runs_unrevoked(self, s: Served, prepared: PreparedBatch) -> bool:
        """False if requests of the staged batch were revoked while it waited for the device:
        they are answered REVOKED, the others go back to be batched again (or to the queue if
        the worker is stopping)."""
        keep, revoked = split_revoked(prepared.requests)
        if not revoked:
            return True
        self.writer.put(WriteJob(s.model.name, s.model.version, s.in_hand, (), revoked))
        if self._stopping.is_set():
            self._give_back(s, keep)
        elif keep:
            s.batcher.put_front(keep)
        return False

    def _next_prepared(self, s: Served) -> PreparedBatch | None:
        """Wait, alive however long no work comes, for the next staged batch."""
        loop = threading.current_thread().name
        self.health.idle(loop)
        prepared = s.ready.get()
        self.health.tick(loop)  # from here the batch must finish within the liveness bound
        return prepared

    def _progress(self) -> None:
        self.health.tick(threading.current_thread().name)  # loops are watched by thread name

    def _run_batch(self, s: Served, prepared: PreparedBatch) -> None:
        batch = prepared.requests
        self.hooks.before_batch(s.model.name, s.model.version, batch)
        started = time.perf_counter()
        try:
            with self._compute_slots:
                outcomes = s.runner.execute(prepared)
        except DeviceFailure as exc:
            self._device_failed(s, batch, exc)
            return
        except Exception as exc:  # a runner bug must still answer every request
            log.exception("runner failed outside the model", model=s.model.name)
            outcomes = unrecoverable(batch, exc)
        self.hooks.after_batch(
            s.model.name, s.model.version, batch, outcomes, time.perf_counter() - started
        )
        s.failures.observe(outcomes)
        self._write(s, outcomes)

    def _write(self, s: Served, outcomes: Sequence[Outcome]) -> None:
        self.writer.put(WriteJob(s.model.name, s.model.version, s.in_hand, outcomes, ()))

    def _give_back(self, s: Served, held: Sequence[InferenceRequest]) -> None:
        give_back(self.broker, s.in_hand, [r.tag for r in held])

    def _device_failed(self, s: Served, batch: list[InferenceRequest], exc: BaseException) -> None:
        """Fail only this batch, hand every other held message back, flush, and exit for a restart."""
        self.health.draining()
        with self._fatal_lock:
            first = not self._fatal.is_set()
            self._fatal.set()
            self._stopping.set()
        if not first:  # another thread is already restarting the worker; this batch comes back
            self._give_back(s, batch)
            return
        log.error(
            "unrecoverable device error; restarting worker", model=s.model.name, error=str(exc)
        )
        try:
            self._write(s, unrecoverable(batch, exc))
            for other in self.served:
                other.batcher.close()
                self._give_back(other, other.unstarted() + _staged(other))
            self.writer.close()
            if self._writer_thread is not None:
                self._writer_thread.join(30)
        finally:
            self._on_fatal(EXIT_DEVICE_FAILURE)

    # -- introspection (Celery control command) -----------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per held version: under the model's name the serving one, ``<model>@<v>`` the others
        (a canary, or an old version draining its queue)."""
        return {
            s.model.name if keys.queue_name(s.model.name) in s.fetches else s.label: {
                "version": s.model.version,
                "queues": sorted(s.fetches),
                "in_hand": s.in_hand.count,
                "waiting_in_batcher": len(s.batcher),
                "effective_max_batch_size": s.runner.cap.value,
                "warmup_s": s.warmup_s,
            }
            for s in self.served
        }


def _staged(s: Served) -> list[InferenceRequest]:
    """The requests of the batch staged and waiting for a run thread, taken off its slot."""
    try:
        staged = s.ready.get_nowait()
    except Empty:
        return []
    return staged.requests if staged is not None else []
