"""The inference service: per served model, a fetcher thread, a prepare thread and one run
thread per instance (``[instances] count`` on CPU, one on a GPU); one writer and one housekeeping thread.

    Redis --Fetcher (bulk, recorded as unacked)--> decode/validate --> MicroBatcher
          --> prepare (staged on the device) --> Runner --> ResultWriter
          --(results + acks, one script call)--> Redis

The stages overlap: while batch k runs on the device, batch k+1 is fetched, decoded and staged
and the results of batch k-1 are written and acknowledged. Messages a worker holds are bounded
(``max_batch_size * (prefetch_batches + 1)`` per model) and counted from fetch to ack. This
module owns the lifecycle (which thread runs what, start and stop) and the operations
``worker/versions.py`` runs to start and release versions. Loading a version is
``worker/loader.py``'s, the device loops (prepare, run, device failure) ``worker/device_loops.py``'s;
the fetcher, writer and housekeeping live in their own modules.

Stop order (warm shutdown): stop fetching, put held-but-unstarted messages back on their queues,
let each runner finish the batch in hand, write and ack those results, stop.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import redis
import torch

from inferq.shared import keys
from inferq.shared.errors import ConfigError
from inferq.shared.logs import bind_thread, get_logger
from inferq.shared.redisconn import make_client
from inferq.shared.registry import Registry
from inferq.shared.settings import Settings
from inferq.shared.spec import InputSpec
from inferq.worker.checks import check_settings, for_device
from inferq.worker.device_loops import DeviceLoops
from inferq.worker.fetcher import Fetcher
from inferq.worker.handlers import load_handler
from inferq.worker.health import Health
from inferq.worker.hooks import Hooks
from inferq.worker.housekeeping import Housekeeping
from inferq.worker.loader import HandlerLoader, VersionLoader
from inferq.worker.placed import make_broker, where_served
from inferq.worker.preflight import check_broker, preflight
from inferq.worker.repository import ModelRepository, ModelVersion
from inferq.worker.runner import Runner
from inferq.worker.served import FetchLoop, Served
from inferq.worker.tuning import name_os_thread, torch_threads, tune_threads
from inferq.worker.versions import VersionManager, initial_versions
from inferq.worker.writer import ResultWriter

log = get_logger(__name__)

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
        self.served: list[Served] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._writer_thread: threading.Thread | None = None
        self._versions_thread: threading.Thread | None = None
        self.client: redis.Redis = make_client(settings.broker_url)  # the home Redis
        # The models' placement, once: the home Redis, another one, or a cluster's shards.
        self.where = where_served(self.client, settings, self.model_names)
        self.broker = make_broker(self.client, settings, self.model_names, self.where)
        self.writer = ResultWriter(self.broker, self.hooks)
        self._loader = VersionLoader(
            handler_loader, self.device, self.worker_name, self.hooks, settings.prefetch_batches
        )
        self.loops = DeviceLoops(
            self.broker,
            self.writer,
            self.hooks,
            self.health,
            self._stopping,
            lambda: self.served,
            self._flush_writer,
            on_fatal,
        )
        # Its specs are the served models', set once they are loaded (start).
        self.housekeeping = Housekeeping(
            self.broker, settings, self.hooks, self.worker_name, self.device, ()
        )
        self.housekeeping.home = self.client
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
        if self.where.broker_url != self.settings.broker_url and not self.where.cluster:
            check_broker(self.where.broker_url)
        self.health.expect(self.model_names)
        initial = initial_versions(self.registry, self.repository, self.model_names)
        models = for_device(initial, self.device)
        instances = sum(m.config.instances for m in models)
        self.loops.compute_slots = threading.Semaphore(max(m.config.instances for m in models))
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
        # Polling loops report each round to /live.
        self.housekeeping.on_round = self.health.tick_here
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
            self.loops.give_back(s, s.unstarted())
        for s in served:
            for t in s.threads:
                t.join(timeout)
        self.writer.close()
        for t in self._threads:
            t.join(timeout)
        self.housekeeping.unpublish()
        self.hooks.on_stop()
        log.info("worker stopped")

    def _flush_writer(self) -> None:
        """Write and ack what the writer holds, then end it (a device failure's last step)."""
        self.writer.close()
        if self._writer_thread is not None:
            self._writer_thread.join(30)

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
        s.threads.append(self._spawn(f"inferq-prepare-{s.label}", self.loops.prepare_loop, s))
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
        fetcher.on_round = self.health.tick_here
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
        self.loops.give_back(s, s.take_delayed())
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
            s = self._loader.load(model)
            if validate is not None:  # on this thread, like every torch call of the model
                validate(s.runner, model)
        except BaseException as exc:
            future.set_exception(exc)
            return
        s.threads.append(threading.current_thread())
        for i in range(1, model.config.instances):  # the model's other instances, loaded above
            s.threads.append(self._spawn(f"inferq-run-{s.label}-{i}", self.loops.run_loop, s))
        c = model.config
        self.hooks.on_model_loaded(model.name, model.version, c.platform, c.precision.mode)
        self.health.loaded(model.name)
        future.set_result(s)
        self.loops.run_loop(s)

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
