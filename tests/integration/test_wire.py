"""The jpeg and png wires through a real worker: ``submit_job.delay`` / ``submit_many`` encode
after preprocessing, the worker decodes in its decode stage, foreign Celery clients send encoded
images too, and an image that does not decode fails alone."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import numpy as np
import pytest
from celery import Celery

from inferq.producer import gather, submit_job, submit_many
from inferq.producer.tools.synth import make_images
from inferq.shared import keys
from inferq.shared.errors import InvalidInput
from inferq.shared.spec import InputSpec
from inferq.shared.wire import EncodedImage, encode_image
from inferq.worker.examples.build import HELDOUT_SEED, HELDOUT_SIZE
from inferq.worker.intake import InferenceRequest, decode_message
from inferq.worker.repository import ModelRepository
from tests.models import write_model

pytestmark = pytest.mark.integration


def _wired(repo: Path, source: str, name: str, wire: str) -> None:
    """A copy of model ``source`` named ``name`` whose config says ``[input] wire``."""
    shutil.copytree(repo / source, repo / name)
    config = repo / name / "config.toml"
    config.write_text(config.read_text().replace("[input]\n", f'[input]\nwire = "{wire}"\n', 1))


@pytest.fixture
def wire_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_model(repo, "tiny", "tiny")
    _wired(repo, "tiny", "tiny-png", "png")
    _wired(repo, "tiny", "tiny-jpeg", "jpeg")
    return repo


def _imgs(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(n)]


def _queued_payload(stack, model: str) -> object:
    """The request the worker would read from the model's queue (nothing is serving it yet)."""
    queue = keys.priority_queue_key(keys.queue_name(model), keys.DEFAULT_PRIORITY)
    raw = stack.client.lindex(queue, 0)
    spec = InputSpec.from_json(stack.client.get(keys.model_spec_key(model)))
    decoded = decode_message("tag", raw, spec, max_bytes=1 << 20)
    assert isinstance(decoded, InferenceRequest), decoded
    return decoded.array


def test_png_wire_gives_exactly_the_raw_wires_results(stack_factory, wire_repo: Path) -> None:
    stack = stack_factory(wire_repo)
    spec = ModelRepository(wire_repo).resolve("tiny-png").config.input_spec(1)
    stack.client.set(keys.model_spec_key("tiny-png"), spec.to_json())  # as a worker publishes it
    pending = submit_job.delay(_imgs(1)[0], model="tiny-png")
    payload = _queued_payload(stack, "tiny-png")
    assert isinstance(payload, EncodedImage) and payload.format == "png"
    stack.worker("tiny", "tiny-png")
    assert pending.get(timeout=30)["model"] == "tiny-png"
    imgs = _imgs(40)
    raw = gather(submit_many(imgs, model="tiny"), timeout=60)
    png = [submit_job.delay(img, model="tiny-png").get(timeout=30) for img in imgs]
    # The same pixels: the same ranking, and scores equal but for the batch sizes' rounding.
    assert [[o["index"] for o in r["outputs"]] for r in png] == [
        [o["index"] for o in r["outputs"]] for r in raw
    ]
    scores = [o["score"] for r in png for o in r["outputs"]]
    assert scores == pytest.approx([o["score"] for r in raw for o in r["outputs"]], rel=1e-5)


def test_jpeg_wire_classifier_agrees_with_raw_on_held_out_images(
    stack_factory, shapes_repo_copy: Path
) -> None:
    _wired(shapes_repo_copy, "shapes", "shapes-jpeg", "jpeg")
    stack = stack_factory(shapes_repo_copy)
    stack.worker("shapes", "shapes-jpeg")
    images, labels = make_images(120, seed=HELDOUT_SEED, size=HELDOUT_SIZE)
    raw = gather(submit_many(images, model="shapes"), timeout=120)
    jpeg = gather(submit_many(images, model="shapes-jpeg"), timeout=120)
    top_raw = [r["outputs"][0]["index"] for r in raw]
    top_jpeg = [r["outputs"][0]["index"] for r in jpeg]
    agreement = np.mean(np.array(top_raw) == np.array(top_jpeg))
    assert agreement >= 0.99, agreement
    assert np.mean(np.array(top_jpeg) == labels) >= 0.95
    assert {r["model"] for r in jpeg} == {"shapes-jpeg"}


def test_foreign_clients_send_encoded_images_and_a_bad_one_fails_alone(
    stack_factory, wire_repo: Path
) -> None:
    stack = stack_factory(wire_repo)
    stack.worker("tiny-jpeg")
    app = Celery(broker=stack.redis.url, backend=stack.redis.url)
    chw = _imgs(1)[0].transpose(2, 0, 1)
    good = encode_image(np.ascontiguousarray(chw), "jpeg", 90)
    bad = good[: len(good) // 2]
    queue = keys.queue_name("tiny-jpeg")
    sent = []
    for serializer in ("msgpack", "json"):
        app.conf.update(
            task_serializer=serializer, accept_content=["msgpack", "json"], result_serializer="json"
        )
        for blob in (good, bad, good):
            arg = blob if serializer == "msgpack" else base64.b64encode(blob).decode()
            sent.append(
                app.send_task(
                    keys.TASK_NAME, args=[arg], kwargs={"model": "tiny-jpeg"}, queue=queue
                )
            )
    ours = submit_job.delay(_imgs(1)[0], model="tiny-jpeg")
    for i, r in enumerate(sent):
        if i % 3 == 1:
            with pytest.raises(InvalidInput, match="decodable JPEG or PNG"):
                r.get(timeout=30)
        else:
            assert r.get(timeout=30)["model"] == "tiny-jpeg"
    # The producer's own request of the same image computes what the foreign ones did.
    assert ours.get(timeout=30)["outputs"] == sent[0].get(timeout=30)["outputs"]
