"""The trained examples served by a real worker through ``submit_job.delay``, scored against what
they were made from exactly as in-process (``inferq.worker.examples.served``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from inferq.producer import gather, submit_job
from inferq.worker.examples.served import text_correct
from inferq.worker.examples.textcls import TEXT_CLASSES, make_sentences, pad_batch
from tests.conftest import ShapesBuild, Stack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning"),
]
SEED = 5151  # fresh: no training, held-out or test seed


def _serve(factory: Callable[..., Stack], build: ShapesBuild, tmp: Path, *models: str) -> Stack:
    repo = Path(shutil.copytree(build.repo, tmp / "repo"))
    stack = factory(repo)
    stack.worker(*models)
    return stack


def test_textcls_serves_variable_length_sentences(
    stack_factory: Callable[..., Stack], textcls_build: ShapesBuild, tmp_path: Path
) -> None:
    _serve(stack_factory, textcls_build, tmp_path, "textcls")
    sentences, labels = make_sentences(300, seed=SEED)
    values = gather(
        [submit_job.delay({"input_ids": s}, model="textcls") for s in sentences], timeout=120
    )
    assert text_correct(values, labels) / len(labels) >= 0.95
    # Batched and padded by the worker (buckets 16/32/64), each answer is what the model gives
    # the sentence alone.
    model = torch.jit.load(str(textcls_build.repo / "textcls" / "1" / "model.pt"))
    with torch.no_grad():
        alone = [int(model(*pad_batch([s])).argmax()) for s in sentences]
    assert [v["outputs"][0]["label"] for v in values] == [TEXT_CLASSES[i] for i in alone]
