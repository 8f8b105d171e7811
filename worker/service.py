"""The inference service: per served model, a fetcher thread, a prepare thread and one run
thread per instance (``[instances] count``, CPU only); one writer.

    Redis --fetch (bulk, atomic with unacked bookkeeping)--> decode/validate --> MicroBatcher
          --> Runner (device) --> ResultWriter --(results + acks, one pipelined round trip)--> Redis

The three stages overlap: while batch k runs on the device, batch k+1 is fetched and decoded and
the results of batch k-1 are written and acknowledged. Messages a worker holds are bounded
(``max_batch_size * (prefetch_batches + 1)`` per model) and counted from fetch to ack.

Stop order (warm shutdown): stop fetching, put held-but-unstarted messages back on their queues,
let each runner finish the batch in hand, write and ack those results, stop.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from queue import Empty, Queue
from typing import Any

import redis
import torch

from inferq.shared import keys
from inferq.shared.errors import ConfigError, ModelError
from inferq.shared.logs import get_logger
from inferq.shared.redisconn import CONNECTION_ERRORS, make_client
from inferq.shared.results import failure_meta, now_iso, success_meta
from inferq.shared.settings import Settings
from inferq.shared.spec import InputSpec
from inferq.worker.batcher import BatchPolicy, MicroBatcher
from inferq.worker.broker import Broker, Taken, Write
from inferq.worker.handlers import ModelHandler, load_handler
from inferq.worker.hooks import Hooks
from inferq.worker.intake import InferenceRequest, Rejection, decode_message
from inferq.worker.repository import ModelRepository, ModelVersion
from inferq.worker.runner import (
    DeviceFailure,
    Outcome,
    PreparedBatch,
    Runner,
    is_oom,
    unrecoverable,
)
from inferq.worker.tuning import name_os_thread, torch_threads, tune_threads

log = get_logger(__name__)

EXIT_DEVICE_FAILURE = 75  # the supervisor restarts a worker that exits with this code
_FETCH_MAX = 256  # messages per fetch round trip at most
ETA_HORIZON_S = 1.0  # messages due later than this are parked in Redis, not held here


class InHand:
    """Messages taken from Redis and not yet acknowledged, bounded by ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._cond = threading.Condition()

    def room(self) -> int:
        with self._cond:
            return max(0, self.limit - self.count)

    def add(self, n: int) -> None:
        with self._cond:
            self.count += n

    def done(self, n: int) -> None:
        with self._cond:
            self.count -= n
            self._cond.notify_all()

    def wait_for_room(self, timeout: float) -> None:
        with self._cond:
            if self.count >= self.limit:
                self._cond.wait(timeout)


@dataclass
class Served:
    """One model this worker serves."""

    model: ModelVersion
    spec: InputSpec
    runner: Runner
    batcher: MicroBatcher[InferenceRequest]
    in_hand: InHand
    warmup_s: dict[int, float]
    queue: str = ""
    delayed: list[InferenceRequest] = field(default_factory=list)  # eta in the future
    # One prepared batch waits here while the one before it computes.
    ready: Queue[PreparedBatch | None] = field(default_factory=lambda: Queue(maxsize=1))

    def __post_init__(self) -> None:
        self.queue = keys.queue_name(self.model.name)

    def end_runs(self) -> None:
        """Tell each of the model's run threads to end once the batches before are computed."""
        for _ in range(self.model.config.instances):
            self.ready.put(None)


@dataclass(frozen=True)
class WriteJob:
    served: Served
    outcomes: Sequence[Outcome]
    rejections: Sequence[Rejection]

    def writes(self) -> list[Write]:
        done = now_iso()  # one date_done for the batch: its results are stored together
        out = [Write(o.request.tag, o.request.task_id, _meta(o, done)) for o in self.outcomes]
        out += [
            Write(r.tag, r.task_id, failure_meta(r.task_id, r.error, done) if r.task_id else None)
            for r in self.rejections
        ]
        return out


def _meta(o: Outcome, date_done: str) -> bytes:
    if o.error is not None:
        return failure_meta(o.request.task_id, o.error, date_done)
    assert o.value is not None
    try:
        return success_meta(o.request.task_id, o.value, date_done)
    except (TypeError, ValueError) as exc:  # an output JSON cannot carry still ends the request
        error = ModelError(
            f"model output must be JSON-serialisable, got {type(exc).__name__}: {exc}"
        )
        return failure_meta(o.request.task_id, error, date_done)


HandlerLoader = Callable[[ModelVersion, torch.device], ModelHandler]


class InferenceService:
    def __init__(
        self,
        settings: Settings,
        models: Sequence[str],
        device: str,
        *,
        worker_name: str | None = None,
        hooks: Hooks | None = None,
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
        self._load_handler = handler_loader
        self._on_fatal = on_fatal
        self.served: list[Served] = []
        self._stopping = threading.Event()
        self._fatal = threading.Event()
        self._fatal_lock = threading.Lock()
        # Batches computing at once on the device: one per instance of the largest model.
        self._compute_slots = threading.Semaphore(1)
        self._writes: Queue[WriteJob | None] = Queue()
        self._threads: list[threading.Thread] = []
        self._fetch_threads: list[threading.Thread] = []
        self._runner_threads: list[threading.Thread] = []
        self.client: redis.Redis = make_client(settings.broker_url)
        results = (
            self.client
            if settings.result_backend == settings.broker_url
            else make_client(settings.result_backend)
        )
        self.broker = Broker(
            self.client, results, settings.result_ttl_s, make_client(settings.broker_url, retries=0)
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        # The stages hand work to each other through the GIL; with the default 5 ms switch
        # interval a runner coming back from the device can wait that long for a decoding
        # fetcher. A shorter interval keeps the device fed.
        sys.setswitchinterval(self.settings.switch_interval_s)
        repo = ModelRepository(self.settings.model_repository)
        models = [repo.resolve(name) for name in self.model_names]
        instances = check_instances(self.device, models)
        self._compute_slots = threading.Semaphore(max(m.config.instances for m in models))
        # malloc is tuned earlier, before any thread exists (inferq.worker.app, or the child's env).
        tune_threads(torch_threads(self.settings.torch_threads, self.device.type, instances))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # CUDA is first touched here, after the fork
        self.served = self._start_run_threads(models)
        try:
            check_settings(self.settings, self.served)
        except ConfigError:
            for s in self.served:
                s.end_runs()  # nothing was fetched: the run threads just end
            raise
        self._publish_specs()
        self._spawn("inferq-writer", self._write_loop)
        self._spawn("inferq-housekeeping", self._housekeeping_loop)
        for s in self.served:
            self._fetch_threads.append(
                self._spawn(f"inferq-fetch-{s.model.name}", self._fetch_loop, s)
            )
            self._runner_threads.append(
                self._spawn(f"inferq-prepare-{s.model.name}", self._prepare_loop, s)
            )
        log.info(
            "worker serving",
            models=[f"{s.model.name}:{s.model.version}" for s in self.served],
            device=str(self.device),
            worker=self.worker_name,
        )

    def stop(self, timeout: float = 60.0) -> None:
        """Warm shutdown: nothing lost, nothing computed twice."""
        if self._stopping.is_set():
            return
        log.info("warm shutdown: finishing the batches in hand")
        self._stopping.set()
        for t in self._fetch_threads:
            t.join(timeout)
        for s in self.served:
            s.batcher.close()
            self._give_back(s, s.batcher.drain() + s.delayed)
            s.delayed = []
        for t in self._runner_threads:
            t.join(timeout)
        self._writes.put(None)
        for t in self._threads:
            t.join(timeout)
        self._unpublish()
        self.hooks.emit("on_stop")
        log.info("worker stopped")

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        def run() -> None:
            name_os_thread(name)  # top -H, py-spy and /proc show which stage is which
            target(*args)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

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
            self._runner_threads.append(
                self._spawn(f"inferq-run-{model.name}", self._device_thread, model, future)
            )
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

    def _device_thread(self, model: ModelVersion, future: Future[Served]) -> None:
        try:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # the current device is per thread
            s = self._load(model)
        except BaseException as exc:
            future.set_exception(exc)
            return
        for i in range(1, model.config.instances):  # the model's other instances, loaded above
            self._runner_threads.append(
                self._spawn(f"inferq-run-{model.name}-{i}", self._run_loop, s)
            )
        future.set_result(s)
        self._run_loop(s)

    def _load(self, model: ModelVersion) -> Served:
        started = time.perf_counter()
        handler = self._load_handler(model, self.device)
        runner = Runner(handler, model.config, model.version, self.device, self.worker_name)
        warmup = runner.warmup()
        b = model.config.batching
        policy = BatchPolicy(b.max_batch_size, b.max_wait_ms / 1e3, b.preferred_batch_sizes)
        limit = b.max_batch_size * (self.settings.prefetch_batches + 1)
        log.info(
            "model loaded",
            model=model.name,
            version=model.version,
            seconds=round(time.perf_counter() - started, 3),
            warmup_s={k: round(v, 4) for k, v in warmup.items()},
        )
        self.hooks.emit("on_batch_cap", model.name, runner.cap.value)
        return Served(
            model,
            model.config.input_spec(model.version),
            runner,
            MicroBatcher(policy),
            InHand(limit),
            warmup,
        )

    # -- fetch -------------------------------------------------------------------------------

    def _fetch_loop(self, s: Served) -> None:
        while not self._stopping.is_set():
            try:
                self._fetch_once(s)
            except CONNECTION_ERRORS as exc:
                s.batcher.set_more_coming(False)
                log.warning(
                    "redis unavailable while fetching; retrying", model=s.model.name, error=str(exc)
                )
                self._stopping.wait(0.5)
            except Exception:
                log.exception("fetch loop error", model=s.model.name)
                self._stopping.wait(0.5)

    def _fetch_once(self, s: Served) -> None:
        self._release_due(s)
        room = s.in_hand.room()
        if room <= 0:
            s.in_hand.wait_for_room(0.05)
            return
        want = min(room, _FETCH_MAX)
        taken = self.broker.take(s.queue, want)
        if taken is None:
            s.batcher.set_more_coming(False)
            self.broker.wait(s.queue, self.settings.idle_poll_s)
            return
        if not self._record(taken):
            return
        fetched = taken.fetched
        if self._stopping.is_set():
            self._give_back_tags([f.tag for f in fetched])
            return
        s.in_hand.add(len(fetched))
        more = sum(taken.counts) == want
        requests, rejections = self._decode(s, fetched)
        if rejections:
            self._writes.put(WriteJob(s, (), rejections))
        s.batcher.put(requests, more_coming=more)
        self.hooks.emit("after_fetch", s.model.name, len(fetched), more)

    def _record(self, taken: Taken) -> bool:
        """Record a fetch's messages as unacked (the transaction is safe to repeat). False if
        the worker stops first: the hold then goes back to the queue after the visibility
        timeout, and nothing was started."""
        recorded = self._until_redis_takes(
            partial(self.broker.record, taken),
            "recording fetched messages",
            stop=self._stopping,
            held=len(taken.fetched),
        )
        if not recorded:
            log.warning("stopping with a fetch not recorded; its hold goes back later")
        return recorded

    def _until_redis_takes(
        self,
        action: Callable[[], None],
        what: str,
        *,
        stop: threading.Event | None = None,
        **fields: Any,
    ) -> bool:
        """Run ``action`` until Redis takes it, backing off while Redis refuses (out of memory,
        loading) or is unreachable; False if ``stop`` is set first."""
        delay = 0.05
        while True:
            try:
                action()
                return True
            except (redis.RedisError, OSError) as exc:
                if stop is not None and stop.is_set():
                    return False
                log.warning(
                    f"redis refused or unreachable while {what}; retrying", error=str(exc), **fields
                )
                if stop is not None:
                    stop.wait(delay)
                else:
                    time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _decode(
        self, s: Served, fetched: Sequence[Any]
    ) -> tuple[list[InferenceRequest], list[Rejection]]:
        requests: list[InferenceRequest] = []
        rejections: list[Rejection] = []
        wall = time.time()
        for f in fetched:
            d = decode_message(f.tag, f.raw, s.spec, max_bytes=self.settings.max_payload_bytes)
            if isinstance(d, Rejection):
                rejections.append(d)
            elif d.eta is not None and d.eta > wall + ETA_HORIZON_S:
                self.broker.schedule(d.tag, d.eta, s.queue, d.priority, f.raw)
                s.in_hand.done(1)
            elif d.eta is not None and d.eta > wall:
                s.delayed.append(d)
            else:
                requests.append(d)
        return requests, rejections

    def _release_due(self, s: Served) -> None:
        if not s.delayed:
            return
        now = time.time()
        due = [r for r in s.delayed if r.eta is not None and r.eta <= now]
        if due:
            s.delayed = [r for r in s.delayed if r.eta is not None and r.eta > now]
            for r in due:
                r.received_at = time.monotonic()
            s.batcher.put(due, more_coming=True)

    # -- run ---------------------------------------------------------------------------------

    def _prepare_loop(self, s: Served) -> None:
        """Close batches and stage them on the device while the previous batch computes."""
        while not self._fatal.is_set():
            batch = s.batcher.next_batch(timeout=0.1, cap=s.runner.cap.value)
            if not batch:
                if self._stopping.is_set() and len(s.batcher) == 0:
                    break
                continue
            prepared = self._prepare(s, batch)
            if prepared is not None:
                s.ready.put(prepared)
        s.end_runs()

    def _prepare(self, s: Served, batch: list[InferenceRequest]) -> PreparedBatch | None:
        try:
            return s.runner.prepare(batch)
        except DeviceFailure as exc:
            self._device_failed(s, batch, exc)
        except Exception as exc:
            if (
                is_oom(exc) and len(batch) > 1
            ):  # no room to stage it: smaller batches, same requests
                s.runner.cap.shrink(len(batch))
                s.batcher.put_front(batch)
                self.hooks.emit("on_batch_cap", s.model.name, s.runner.cap.value)
            else:  # a staging failure must still answer every request
                log.exception("could not stage a batch", model=s.model.name)
                self._writes.put(WriteJob(s, unrecoverable(batch, exc), ()))
        return None

    def _run_loop(self, s: Served) -> None:
        while (prepared := s.ready.get()) is not None:
            if self._fatal.is_set():  # the device is gone: hand the staged batch back untouched
                self._give_back(s, prepared.requests)
                continue
            self._run_batch(s, prepared)

    def _run_batch(self, s: Served, prepared: PreparedBatch) -> None:
        cap = s.runner.cap.value
        batch = prepared.requests
        self.hooks.emit("before_batch", s.model.name, batch)
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
        self.hooks.emit("after_batch", s.model.name, batch, outcomes, time.perf_counter() - started)
        if s.runner.cap.value != cap:
            self.hooks.emit("on_batch_cap", s.model.name, s.runner.cap.value)
        self._writes.put(WriteJob(s, outcomes, ()))

    def _device_failed(self, s: Served, batch: list[InferenceRequest], exc: BaseException) -> None:
        """Fail only this batch, hand every other held message back, flush, and exit for a restart."""
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
            self._writes.put(WriteJob(s, unrecoverable(batch, exc), ()))
            for other in self.served:
                other.batcher.close()
                try:
                    staged = other.ready.get_nowait()
                except Empty:
                    staged = None
                unstarted = staged.requests if staged is not None else []
                self._give_back(other, other.batcher.drain() + other.delayed + unstarted)
            self._writes.put(None)
            for t in self._threads:
                if t.name == "inferq-writer":
                    t.join(30)
        finally:
            self._on_fatal(EXIT_DEVICE_FAILURE)

    # -- write -------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        done = False
        while not done:
            jobs: list[WriteJob] = []
            item = self._writes.get()
            while True:
                if item is None:
                    done = True
                else:
                    jobs.append(item)
                try:
                    item = self._writes.get_nowait()
                except Empty:
                    break
            if jobs:
                self._store(jobs)

    def _store(self, jobs: list[WriteJob]) -> None:
        writes = [w for job in jobs for w in job.writes()]
        started = time.perf_counter()
        # Results stay here until Redis takes them, stopping or not; if this process dies first
        # the messages are redelivered after the visibility timeout, so nothing is lost.
        self._until_redis_takes(
            partial(self.broker.store_and_ack, writes), "storing results", pending=len(writes)
        )
        seconds = time.perf_counter() - started
        for job in jobs:
            job.served.in_hand.done(len(job.outcomes) + len(job.rejections))
            self.hooks.emit(
                "after_store", job.served.model.name, job.outcomes, job.rejections, seconds
            )

    # -- give back ---------------------------------------------------------------------------

    def _give_back(self, s: Served, held: Sequence[InferenceRequest]) -> None:
        if held:
            self._give_back_tags([r.tag for r in held])
            s.in_hand.done(len(held))

    def _give_back_tags(self, tags: Sequence[str]) -> None:
        try:
            restored = self.broker.restore(tags)
            log.info("returned unstarted messages to their queues", count=restored)
        except CONNECTION_ERRORS:
            log.warning(
                "could not return messages now; they come back after the visibility timeout",
                count=len(tags),
            )

    # -- housekeeping ------------------------------------------------------------------------

    def _housekeeping_loop(self) -> None:
        """Every quarter second: scheduled messages that came due. Every second: device and
        queue gauges, specs when Redis lost them. On their own periods: heartbeat, redelivery."""
        due = {"beat": 0.0, "sweep": 0.0, "gauges": 0.0}
        while not self._stopping.wait(0.25):
            try:
                self._housekeep(due, time.monotonic())
            except CONNECTION_ERRORS as exc:
                log.warning("redis unavailable for housekeeping", error=str(exc))
            except Exception:  # housekeeping must outlive any one bad reply or entry
                log.exception("housekeeping step failed; continuing")

    def _housekeep(self, due: dict[str, float], now: float) -> None:
        self.broker.promote_due()
        if now >= due["gauges"]:
            self._measure_device()
            if self._measure_depths():  # a restarted Redis has lost our specs
                due["beat"] = 0.0
            due["gauges"] = now + 1.0
        if now >= due["beat"]:
            self._publish_specs()
            due["beat"] = now + self.settings.heartbeat_s
        if now >= due["sweep"]:
            restored = self.broker.restore_expired(self.settings.visibility_timeout_s)
            restored += self.broker.return_holds(self.settings.visibility_timeout_s)
            if restored:
                log.warning("redelivered messages past the visibility timeout", count=restored)
            due["sweep"] = now + self.settings.restore_interval_s

    def _publish_specs(self) -> None:
        ttl = max(3 * self.settings.heartbeat_s, 30.0)
        pipe = self.client.pipeline(transaction=False)
        for s in self.served:
            pipe.set(keys.model_spec_key(s.model.name), s.spec.to_json(), ex=int(ttl))
            pipe.zadd(keys.model_workers_key(s.model.name), {self.worker_name: time.time()})
        pipe.execute()

    def _measure_device(self) -> None:
        if self.device.type != "cuda":
            return
        try:
            utilization: float | None = torch.cuda.utilization(self.device) / 100.0
        except Exception:  # needs NVML (pynvml); memory is still worth reporting without it
            utilization = None
        memory = torch.cuda.memory_allocated(self.device)
        self.hooks.emit("on_device_stats", str(self.device), memory, utilization)

    def _measure_depths(self) -> bool:
        """Emit each queue's depth; True if any served model's spec is missing from Redis."""
        pipe = self.client.pipeline(transaction=False)
        for s in self.served:
            pipe.exists(keys.model_spec_key(s.model.name))
            for key in keys.queue_keys(s.queue):
                pipe.llen(key)
        replies = pipe.execute()
        stride = 1 + len(keys.PRIORITIES)
        for i, s in enumerate(self.served):
            self.hooks.emit(
                "on_queue_depth", s.model.name, sum(replies[i * stride + 1 : (i + 1) * stride])
            )
        return not all(replies[i * stride] for i in range(len(self.served)))

    def _unpublish(self) -> None:
        try:
            for s in self.served:
                self.client.zrem(keys.model_workers_key(s.model.name), self.worker_name)
        except CONNECTION_ERRORS:
            pass

    # -- introspection (Celery control command) -----------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            s.model.name: {
                "version": s.model.version,
                "in_hand": s.in_hand.count,
                "waiting_in_batcher": len(s.batcher),
                "effective_max_batch_size": s.runner.cap.value,
                "warmup_s": s.warmup_s,
            }
            for s in self.served
        }


def check_instances(device: torch.device, models: Sequence[ModelVersion]) -> int:
    """The run threads the models ask for in all; several per model only on CPU."""
    many = [f"{m.name} ({m.config.instances})" for m in models if m.config.instances > 1]
    if many and device.type != "cpu":
        raise ConfigError(
            f"instances.count above 1 runs on CPU only, got {', '.join(many)} on {device}; "
            f"for more concurrency on one GPU, run more workers on it"
        )
    return sum(m.config.instances for m in models)


def check_settings(settings: Settings, served: Sequence[Served]) -> None:
    """Refuse settings that would silently redeliver work that is still being computed.

    A message held by this worker must be acked before the visibility timeout, or another worker
    computes it again. The worst case is every held message ahead of it running at max batch size.
    """
    for s in served:
        b = s.model.config.batching
        worst_batch = max(s.warmup_s.values())
        batches_ahead = settings.prefetch_batches + 1
        worst = batches_ahead * (worst_batch * 3 + b.max_wait_ms / 1e3) + 1.0
        if settings.visibility_timeout_s < worst:
            raise ConfigError(
                f"INFERQ_VISIBILITY_TIMEOUT_S must exceed the worst time a message can be held by "
                f"this worker for model {s.model.name!r}: got {settings.visibility_timeout_s:g} s, "
                f"need at least {worst:.1f} s ({batches_ahead} batches of {b.max_batch_size} at "
                f"{worst_batch:.2f} s measured at warm-up, x3 margin). Raise "
                f"INFERQ_VISIBILITY_TIMEOUT_S, or lower INFERQ_PREFETCH_BATCHES or max_batch_size."
            )
