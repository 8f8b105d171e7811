"""The runner computing [[inputs]] models (CPU, tests/models.py's token models): padded batches
equal to one-by-one runs, isolation of a bad request, cut-back outputs, ONNX, validation, intake."""

from __future__ import annotations

import itertools
import textwrap
import tomllib
from collections import Counter

import numpy as np
import pytest
import torch

from inferq.shared.errors import InvalidInput
from inferq.shared.spec import parse_config
from inferq.worker.handlers import ModuleHandler
from inferq.worker.intake import InferenceRequest
from inferq.worker.runner import Runner
from tests.models import MAX_TOKENS, POISON_ID, TENSOR_CONFIGS, Tagger, Tokens

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CPU = torch.device("cpu")
_ids = itertools.count()


def _runner(kind: str, module: torch.nn.Module, max_batch_size: int = 16) -> Runner:
    text = (
        textwrap.dedent(TENSOR_CONFIGS[kind]) + f"[batching]\nmax_batch_size = {max_batch_size}\n"
    )
    config = parse_config(kind, tomllib.loads(text))
    handler = ModuleHandler(torch.jit.script(module.eval()))
    handler.setup(CPU, channels_last=False)
    return Runner(handler, config, 1, CPU, "w")


def _request(*tensors: np.ndarray) -> InferenceRequest:
    return InferenceRequest(
        str(next(_ids)),
        "t",
        "tokens",
        tensors[0],
        0.0,
        0.0,
        0.0,
        0.0,
        None,
        None,
        0,
        tensors=tensors,
    )


def _tokens(rng: np.random.Generator, poison: bool = False) -> InferenceRequest:
    ids = rng.integers(0, POISON_ID, rng.integers(1, MAX_TOKENS + 1))
    if poison:
        ids[-1] = POISON_ID
    return _request(ids, rng.integers(0, 2, 4).astype(bool))


def test_a_variable_length_batch_gives_exactly_what_each_request_gives_alone() -> None:
    runner = _runner("tokens", Tokens())
    rng = np.random.default_rng(0)
    batch = [_tokens(rng) for _ in range(12)]
    together = [o.value["outputs"].tolist() for o in runner.run(batch) if o.value is not None]
    alone = [runner.run([r])[0].value["outputs"].tolist() for r in batch]  # type: ignore[union-attr]
    assert together == alone and len(together) == 12
    reference = Tokens().eval()
    for r, got in zip(batch, together, strict=True):
        ids, flags = (torch.from_numpy(a)[None] for a in r.tensors)
        want = reference(ids, flags, torch.ones_like(ids))[0]
        assert got == want.tolist()  # exact: the model's sums of small integers are exact


def test_a_poisoned_request_fails_alone_in_a_padded_batch() -> None:
    runner = _runner("tokens", Tokens())
    rng = np.random.default_rng(1)
    batch = [_tokens(rng, poison=i in (3, 8)) for i in range(10)]
    outcomes = runner.run(batch)
    kinds = Counter(type(o.error).__name__ if o.error else "ok" for o in outcomes)
    assert kinds == Counter(ok=8, ModelError=2)
    assert [o.error is not None for o in outcomes].index(True) == 3
    assert "poisoned token" in str(outcomes[8].error)


def test_outputs_that_follow_an_input_are_cut_back_per_request() -> None:
    runner = _runner("tagger", Tagger())
    lengths = [1, 6, 3, MAX_TOKENS]
    batch = [_request(np.arange(n) + 10) for n in lengths]
    outcomes = runner.run(batch)
    table = Tagger().table
    for n, o in zip(lengths, outcomes, strict=True):
        assert o.value is not None and o.value["outputs"].tolist() == table[10 : 10 + n].tolist()


def test_warmup_runs_every_input_at_its_full_shape() -> None:
    runner = _runner("tokens", Tokens(), max_batch_size=4)
    assert sorted(runner.warmup()) == [1, 4]


class _OomyTokens(torch.nn.Module):
    """Tokens that behave as if the device held at most 2 requests."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Tokens()

    def forward(self, ids: torch.Tensor, flags: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if ids.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self.inner(ids, flags, m)


def test_out_of_memory_splits_a_padded_batch_and_lowers_the_cap() -> None:
    runner = _runner("tokens", _OomyTokens())
    rng = np.random.default_rng(2)
    batch = [_tokens(rng) for _ in range(8)]
    outcomes = runner.run(batch)
    assert all(o.value is not None for o in outcomes) and runner.cap.value <= 4
    assert [o.value["outputs"].tolist() for o in outcomes] == [  # type: ignore[union-attr]
        runner.run([r])[0].value["outputs"].tolist()  # type: ignore[union-attr]
        for r in batch
    ]


def test_intake_decodes_a_named_tensor_message_and_refuses_a_bad_one() -> None:
    from inferq.producer.envelope import task_envelope
    from inferq.shared.inputs import encode_request
    from inferq.worker.intake import Rejection, decode_message

    config = parse_config("tokens", tomllib.loads(textwrap.dedent(TENSOR_CONFIGS["tokens"])))
    spec = config.input_spec(1)
    good = encode_request({"input_ids": [1, 2, 3], "flags": [True] * 4}, spec.inputs, "tokens")
    raw = task_envelope("t1", good, {"model": "tokens"}, spec, 2, None, {})
    decoded = decode_message("tag", raw, spec, max_bytes=1 << 20)
    assert isinstance(decoded, InferenceRequest)
    assert [a.tolist() for a in decoded.tensors] == [[1, 2, 3], [True] * 4]
    bad = task_envelope(
        "t2", {"input_ids": good["input_ids"]}, {"model": "tokens"}, spec, 2, None, {}
    )
    rejected = decode_message("tag", bad, spec, max_bytes=1 << 20)
    assert isinstance(rejected, Rejection) and rejected.task_id == "t2"
    assert isinstance(rejected.error, InvalidInput) and "missing ['flags']" in str(rejected.error)


def test_an_onnx_model_takes_its_named_inputs_in_declared_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from inferq.worker.handlers import OnnxHandler

    path = tmp_path / "tagger.onnx"
    ids, m = torch.zeros((2, 5), dtype=torch.int64), torch.ones((2, 5), dtype=torch.bool)
    torch.onnx.export(
        Tagger().eval(),
        (ids, m),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["rows"],
        dynamic_axes={"input_ids": {0: "n", 1: "l"}, "attention_mask": {0: "n", 1: "l"}},
        dynamo=False,
    )
    text = 'platform = "onnx"\n' + textwrap.dedent(TENSOR_CONFIGS["tagger"])
    handler = OnnxHandler(path)
    handler.setup(CPU, channels_last=False)
    runner = Runner(handler, parse_config("tagger", tomllib.loads(text)), 1, CPU, "w")
    lengths = [2, 7, 4]
    outcomes = runner.run([_request(np.arange(n) + 30) for n in lengths])
    table = Tagger().table
    assert (
        [o.value["outputs"].tolist() for o in outcomes]  # type: ignore[index]
        == [table[30 : 30 + n].tolist() for n in lengths]
    )


def test_a_new_version_of_a_named_tensor_model_is_validated_on_zero_samples(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from inferq.shared.errors import ValidationFailed
    from inferq.worker.repository import ModelRepository
    from inferq.worker.validation import VALIDATION_FILE, validate
    from tests.models import write_tensor_model

    write_tensor_model(tmp_path, "tokens")
    model = ModelRepository(tmp_path).resolve("tokens")
    runner = _runner("tokens", Tokens())
    validate(runner, model)
    np.savez(model.path.parent / VALIDATION_FILE, inputs=np.zeros((1, 3, 8, 8), np.uint8))
    with pytest.raises(ValidationFailed, match=r"declares \[\[inputs\]\].*remove the file"):
        validate(runner, model)


def test_optimize_refuses_a_named_tensor_model_before_writing_anything(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from inferq.shared.errors import ConfigError
    from inferq.worker.optimize.command import OptimizeRequest, optimize
    from tests.models import write_tensor_model

    write_tensor_model(tmp_path, "tokens")
    with pytest.raises(ConfigError, match=r"\[input\] image model, got tokens with \[\[inputs\]\]"):
        optimize(OptimizeRequest(tmp_path, "tokens", 1, "int8"), echo=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "tokens").iterdir()) == ["1", "config.toml"]
