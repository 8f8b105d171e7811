"""The core path with real processes: a private redis-server, a real worker, this process producing."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
from celery import Celery

from inferq.producer import gather, submit_job, submit_many
from inferq.shared import codec, keys
from inferq.shared.errors import InvalidInput, ModelUnavailable
from inferq.shared.results import Timing
from tests.conftest import ROOT
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

TIMING_KEYS = set(typing.get_type_hints(Timing))


def _img(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, size=(8, 8, 3), dtype=np.uint8)


def test_delay_get_returns_predictions_and_timing(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    w = stack.worker("tiny")
    result = submit_job.delay(_img(1), model="tiny").get(timeout=30)
    assert set(result) == {"model", "version", "outputs", "timing"}
    assert result["model"] == "tiny" and result["version"] == 1
    assert [o["label"] for o in result["outputs"]] != []
    assert all(o["label"] in "abcd" for o in result["outputs"])
    assert set(result["timing"]) == TIMING_KEYS
    assert result["timing"]["worker"] == w.hostname
    assert result["timing"]["device"] == "cpu"
    assert result["timing"]["total_ms"] >= result["timing"]["infer_ms"] >= 0


def test_same_input_same_prediction_as_the_model_in_process(stack_factory, test_repo: Path) -> None:
    import torch

    from tests.models import Tiny

    stack = stack_factory(test_repo)
    stack.worker("tiny")
    img = _img(7)
    served = submit_job.delay(img, model="tiny").get(timeout=30)
    x = torch.from_numpy(img.transpose(2, 0, 1).copy()).float().div(255).unsqueeze(0)
    probs = torch.softmax(Tiny().eval()(x), dim=1)[0]
    assert served["outputs"][0]["index"] == int(probs.argmax())
    assert served["outputs"][0]["score"] == pytest.approx(float(probs.max()), rel=1e-4)


def test_producer_errors_are_typed_and_immediate(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("tiny")
    with pytest.raises(InvalidInput, match="decodable"):
        submit_job.delay(b"definitely not an image", model="tiny")
    with pytest.raises(ModelUnavailable, match="nosuchmodel"):
        submit_job.delay(_img(1), model="nosuchmodel")


def test_worker_side_failure_raises_typed_error_from_get(stack_factory, test_repo: Path) -> None:
    """A plain Celery client sends a tensor of the wrong shape: get() raises InvalidInput."""
    stack = stack_factory(test_repo)
    stack.worker("tiny")
    app = Celery(broker=stack.redis.url, backend=stack.redis.url)
    app.conf.update(
        task_serializer="msgpack", accept_content=["msgpack", "json"], result_serializer="json"
    )
    wrong = codec.encode(np.zeros((3, 9, 9), dtype=np.uint8))
    r = app.send_task(
        keys.TASK_NAME, args=[wrong], kwargs={"model": "tiny"}, queue=keys.queue_name("tiny")
    )
    with pytest.raises(InvalidInput, match=r"uint8\[3, 8, 8\].*got uint8\[3, 9, 9\]"):
        r.get(timeout=30)


def test_plain_celery_clients_are_served(stack_factory, test_repo: Path) -> None:
    """Any Celery client can publish: msgpack with bytes, or json with the tensor base64-encoded."""
    stack = stack_factory(test_repo)
    stack.worker("tiny")
    tensor = codec.encode(np.full((3, 8, 8), 9, dtype=np.uint8))
    for serializer, arg in (("msgpack", tensor), ("json", base64.b64encode(tensor).decode())):
        app = Celery(broker=stack.redis.url, backend=stack.redis.url)
        app.conf.update(
            task_serializer=serializer, accept_content=["msgpack", "json"], result_serializer="json"
        )
        r = app.send_task(
            keys.TASK_NAME, args=[arg], kwargs={"model": "tiny"}, queue=keys.queue_name("tiny")
        )
        assert r.get(timeout=30)["model"] == "tiny"


def test_submit_many_and_gather(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("tiny")
    results = submit_many([_img(i) for i in range(300)], model="tiny")
    values = gather(results, timeout=60)
    assert len(values) == 300 and all(v["model"] == "tiny" for v in values)
    assert max(v["timing"]["batch_size"] for v in values) > 1
    # gather and AsyncResult.get see the same stored result
    assert results[5].get(timeout=5) == values[5]


def test_a_model_with_two_instances_computes_on_two_run_threads(
    stack_factory, test_repo: Path
) -> None:
    import psutil
    import torch

    from tests.models import Tiny

    stack = stack_factory(test_repo)
    w = stack.worker("twin", supervised=False)
    names = []
    for t in psutil.Process(w.process.pid).threads():
        with open(f"/proc/{w.process.pid}/task/{t.id}/comm") as fh:
            names.append(fh.read().strip())
    # inferq-run-twin and inferq-run-twin-1, as Linux keeps them (15 bytes)
    assert names.count("inferq-run-twin") == 2
    images = [_img(i) for i in range(200)]
    values = gather(submit_many(images, model="twin"), timeout=60)
    model = Tiny().eval()
    for img, value in zip(images, values, strict=True):
        x = torch.from_numpy(img.transpose(2, 0, 1).copy()).float().div(255).unsqueeze(0)
        probs = torch.softmax(model(x), dim=1)[0]
        assert value["outputs"][0]["index"] == int(probs.argmax())
        assert value["outputs"][0]["score"] == pytest.approx(float(probs.max()), rel=1e-4)


def test_pickle_message_is_refused_and_never_deserialized(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("tiny")
    app = Celery(broker=stack.redis.url, backend=stack.redis.url)
    app.conf.update(
        task_serializer="pickle", accept_content=["pickle", "json"], result_serializer="json"
    )
    r = app.send_task(
        keys.TASK_NAME, args=[b"x"], kwargs={"model": "tiny"}, queue=keys.queue_name("tiny")
    )
    with pytest.raises(InvalidInput, match="pickle"):
        r.get(timeout=30)
    assert submit_job.delay(_img(2), model="tiny").get(timeout=30)["model"] == "tiny"


def test_non_inferq_garbage_goes_to_dead_letter(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("tiny")
    stack.client.lpush(
        keys.priority_queue_key(keys.queue_name("tiny"), keys.DEFAULT_PRIORITY), b"\x00garbage"
    )
    assert submit_job.delay(_img(3), model="tiny").get(timeout=30)["model"] == "tiny"
    # The request went to the version's queue, the garbage to the unversioned one: another
    # fetch thread, which may set it aside a moment after the request is served.
    wait_until(lambda: stack.client.llen("inferq.deadletter"), 10, "the dead letter")
    assert stack.client.lrange("inferq.deadletter", 0, -1) == [b"\x00garbage"]


def test_celery_control_and_inspect_work(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    w = stack.worker("tiny")
    app = Celery(broker=stack.redis.url)
    # The model is listed when the inferq step has started; Celery's consumer, which answers
    # broadcasts, comes up right after it: ask until it does, as a readiness probe would.
    replies = None
    deadline = time.monotonic() + 30
    while not replies and time.monotonic() < deadline:
        replies = app.control.inspect(destination=[w.hostname], timeout=2).ping()
    assert replies and replies[w.hostname] == {"ok": "pong"}
    stats = app.control.inspect(destination=[w.hostname], timeout=5)._request("inferq_stats")
    assert stats[w.hostname]["tiny"]["version"] == 1


def test_burst_from_a_script_that_only_imports_producer(
    stack_factory, shapes_repo: Path, tmp_path: Path
) -> None:
    """The issue's acceptance check: 500 .delay calls, 500 well-formed results, mean batch > 1."""
    stack = stack_factory(shapes_repo)
    stack.worker("shapes")
    script = tmp_path / "burst.py"
    script.write_text(BURST)
    env = {**stack.env(), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["results"] == 500
    assert report["well_formed"] == 500
    # The net is trained once per test session, and 80x64 is not one of its training sizes:
    # 0.948 in one full run, 0.95 and over in the others. A broken path (channel order,
    # normalisation, letterboxing) falls towards chance, 1/6.
    assert report["accuracy"] >= 0.9
    assert report["mean_batch"] > 1.0
    assert report["torch_imported"] is False


BURST = """
import json, sys
import numpy as np
from inferq.producer import submit_job
from inferq.producer.tools.synth import CLASSES, make_images

images, labels = make_images(500, seed=4242, size=(80, 64))
pending = [submit_job.delay(img, model="shapes") for img in images]
values = [p.get(timeout=120) for p in pending]
keys = {"preprocess_ms", "queue_ms", "batch_wait_ms", "infer_ms", "total_ms", "batch_size", "worker", "device"}
well = sum(1 for v in values if set(v) == {"model", "version", "outputs", "timing"} and keys <= set(v["timing"]))
correct = sum(1 for v, y in zip(values, labels) if v["outputs"][0]["label"] == CLASSES[int(y)])
print(json.dumps({
    "results": len(values), "well_formed": well, "accuracy": correct / len(values),
    "mean_batch": float(np.mean([v["timing"]["batch_size"] for v in values])),
    "torch_imported": "torch" in sys.modules,
}))
"""


def test_task_events_reach_a_celery_event_receiver(stack_factory, test_repo: Path) -> None:
    """What Flower does: consume the worker's events with Celery's own EventReceiver."""
    import threading

    stack = stack_factory(test_repo)
    w = stack.worker("tiny")
    app = Celery(broker=stack.redis.url)
    seen: list[dict] = []
    ready = threading.Event()

    def consume() -> None:
        try:
            with app.connection() as conn:
                recv = app.events.Receiver(conn, handlers={"*": seen.append})
                ready.set()
                recv.capture(limit=None, timeout=20, wakeup=True)
        except Exception:  # the test's Redis goes away at teardown
            pass

    threading.Thread(target=consume, daemon=True).start()
    assert ready.wait(10), "the event receiver did not start"
    # A heartbeat seen means the receiver is subscribed, so the task's events cannot slip past.
    wait_until(
        lambda: any(e["type"] == "worker-heartbeat" for e in list(seen)),
        30,
        "a worker heartbeat at the event receiver",
    )
    r = submit_job.delay(_img(5), model="tiny")
    r.get(timeout=30)
    wait_until(
        lambda: (
            {"task-received", "task-succeeded"}
            <= {e["type"] for e in list(seen) if e.get("uuid") == r.id}
        ),
        15,
        "the task's received and succeeded events",
    )
    received = next(e for e in seen if e.get("uuid") == r.id and e["type"] == "task-received")
    assert received["name"] == keys.TASK_NAME and received["hostname"] == w.hostname
    assert any(e["type"] == "task-succeeded" and e.get("uuid") == r.id for e in seen)
    assert any(e["type"] == "worker-heartbeat" and e["hostname"] == w.hostname for e in seen)


def test_inspect_active_lists_the_batch_on_the_device(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    w = stack.worker("slow")
    results = submit_many([_img(i) for i in range(3000)], model="slow")
    app = Celery(broker=stack.redis.url)
    active: list = []
    deadline = time.monotonic() + 20
    while not active and time.monotonic() < deadline:
        reply = app.control.inspect(destination=[w.hostname], timeout=2).active() or {}
        active = reply.get(w.hostname, [])
    assert active, "inspect active never showed a running request"
    assert all(a["name"] == keys.TASK_NAME for a in active)
    assert {a["id"] for a in active} <= {r.id for r in results}
    gather(results, timeout=120)


def test_onnx_model_serves_the_same_predictions(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("tiny", "tiny-onnx")
    img = _img(11)
    torchscript = submit_job.delay(img, model="tiny").get(timeout=30)
    onnx = submit_job.delay(img, model="tiny-onnx").get(timeout=30)
    assert [o["index"] for o in onnx["outputs"]] == [o["index"] for o in torchscript["outputs"]]
    for a, b in zip(onnx["outputs"], torchscript["outputs"], strict=True):
        assert a["score"] == pytest.approx(b["score"], rel=1e-4)


def test_countdown_holds_the_request_until_its_eta(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("tiny")
    started = time.time()
    later = submit_job.apply_async((_img(1),), {"model": "tiny"}, countdown=1.5)
    now = submit_job.apply_async((_img(2),), {"model": "tiny"})
    assert now.get(timeout=30)["model"] == "tiny"
    assert time.time() - started < 1.5, "a delayed request must not hold up the others"
    assert later.get(timeout=30)["model"] == "tiny"
    assert time.time() - started >= 1.5
