"""worker/outputs.py: a batch's outputs cut into one part per request, in every layout."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from inferq.shared.errors import ModelError
from inferq.shared.outputspec import Output
from inferq.worker.outputs import SINGLE, OutputLayout, Parts, as_parts, first_output


def _layout(**kw: object) -> OutputLayout:
    return OutputLayout(Output(**kw))  # type: ignore[arg-type]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_one_dense_tensor_stays_a_tensor() -> None:
    out = torch.arange(12.0).view(3, 4)
    got = _layout().collect(out, 3)
    assert isinstance(got, torch.Tensor) and torch.equal(got, out)


def test_one_tensor_without_a_row_per_input_is_a_model_error() -> None:
    with pytest.raises(ModelError, match=r"one row per input \(3\), got \(2, 4\)"):
        _layout().collect(torch.zeros(2, 4), 3)
    with pytest.raises(ModelError, match=r"one row per input \(3\), got \(\)"):
        _layout().collect(torch.tensor(1.0), 3)


def test_a_tuple_is_named_by_output_names_and_cut_by_row() -> None:
    a, b = torch.arange(6.0).view(3, 2), torch.arange(3)
    got = _layout(names=("boxes", "labels")).collect((a, b), 3)
    assert isinstance(got, Parts) and len(got) == 3
    for i, part in enumerate(got):
        assert _equal(part, {"boxes": a[i], "labels": b[i]})


def test_an_unnamed_tuple_is_named_by_position() -> None:
    got = _layout().collect([torch.zeros(2, 1), torch.ones(2)], 2)
    assert isinstance(got, Parts)
    assert [sorted(p) for p in got] == [["0", "1"], ["0", "1"]]


def test_a_tuple_of_the_wrong_count_for_its_names_is_refused() -> None:
    with pytest.raises(ModelError, match=r"must return 2 outputs .*got 3"):
        _layout(names=("a", "b")).collect((torch.zeros(1),) * 3, 1)


def test_a_dict_keeps_its_keys_and_half_precision_becomes_float32() -> None:
    out = {"boxes": torch.ones(2, 5, 4, dtype=torch.float16), "count": torch.tensor([5, 5])}
    got = _layout().collect(out, 2)
    assert isinstance(got, Parts)
    assert got.values[0]["boxes"].dtype == torch.float32
    assert got.values[1]["count"].dtype == torch.int64


def test_a_dense_output_with_a_short_member_names_it() -> None:
    with pytest.raises(ModelError, match=r"output 'scores' must have one row per input \(3\)"):
        _layout().collect({"boxes": torch.zeros(3, 4), "scores": torch.zeros(2)}, 3)


def test_non_tensor_outputs_are_refused() -> None:
    with pytest.raises(ModelError, match=r"output 'x' must be a tensor, got str"):
        _layout().collect({"x": "nope"}, 1)
    with pytest.raises(ModelError, match=r"a tensor, a tuple/list of tensors or a dict"):
        _layout().collect(3.0, 1)


# -- a variable number of rows per request ------------------------------------------------------


def test_batch_index_column_gives_each_request_its_rows_in_order_without_the_column() -> None:
    # rows for a batch of 3: request 2 has two rows, request 0 one, request 1 none
    det = torch.tensor(
        [[2.0, 10, 11], [0.0, 20, 21], [2.0, 30, 31]],
    )
    scores = torch.tensor([0.9, 0.8, 0.7])
    layout = _layout(names=("det", "scores"), rows="batch_index", batch_index="det")
    got = layout.collect((det, scores), 3)
    assert isinstance(got, Parts) and len(got) == 3
    assert _equal(got.values[0], {"det": torch.tensor([[20.0, 21]]), "scores": torch.tensor([0.8])})
    assert got.values[1]["det"].shape == (0, 2) and got.values[1]["scores"].shape == (0,)
    assert _equal(
        got.values[2],
        {"det": torch.tensor([[10.0, 11], [30.0, 31]]), "scores": torch.tensor([0.9, 0.7])},
    )


def test_batch_index_as_its_own_output_is_dropped_from_results() -> None:
    out = {"idx": torch.tensor([1, 1, 0]), "boxes": torch.arange(12.0).view(3, 4)}
    got = _layout(rows="batch_index", batch_index="idx").collect(out, 2)
    assert isinstance(got, Parts)
    assert _equal(got.values[0], {"boxes": torch.arange(8.0, 12.0).view(1, 4)})
    assert _equal(got.values[1], {"boxes": torch.arange(8.0).view(2, 4)})


def test_batch_index_column_other_than_zero() -> None:
    det = torch.tensor([[5.0, 1.0], [6.0, 0.0]])
    got = _layout(rows="batch_index", batch_index="d", batch_column=1).collect({"d": det}, 2)
    assert isinstance(got, Parts)
    assert torch.equal(got.values[0]["d"], torch.tensor([[6.0]]))
    assert torch.equal(got.values[1]["d"], torch.tensor([[5.0]]))


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (torch.tensor([0, 3]), r"batch indices in 0\.\.1, got 0\.\.3"),
        (torch.tensor([-1, 0]), r"batch indices in 0\.\.1, got -1\.\.0"),
        (torch.tensor([0.5, 1.0]), r"whole batch indices, got fractions"),
    ],
)
def test_bad_batch_indices_are_model_errors(index: torch.Tensor, message: str) -> None:
    out = {"i": index, "x": torch.zeros(2)}
    with pytest.raises(ModelError, match=message):
        _layout(rows="batch_index", batch_index="i").collect(out, 2)


def test_batch_index_rows_must_match_every_output_and_the_index_must_exist() -> None:
    layout = _layout(rows="batch_index", batch_index="i")
    with pytest.raises(ModelError, match=r"output 'x' must have a row per index row \(2\)"):
        layout.collect({"i": torch.tensor([0, 1]), "x": torch.zeros(3)}, 2)
    with pytest.raises(ModelError, match=r"must return the output 'i'"):
        layout.collect({"x": torch.zeros(3)}, 2)


def test_list_layout_takes_one_entry_per_request() -> None:
    out = [
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)},
        {"boxes": torch.ones(2, 4), "scores": torch.tensor([0.5, 0.25])},
    ]
    got = _layout(rows="list").collect(out, 2)
    assert isinstance(got, Parts)
    assert got.values[0]["boxes"].shape == (0, 4)
    assert torch.equal(got.values[1]["scores"], torch.tensor([0.5, 0.25]))


def test_list_of_plain_tensors_and_the_wrong_count() -> None:
    got = _layout(rows="list").collect([torch.zeros(1), torch.ones(3)], 2)
    assert isinstance(got, Parts)
    assert got.values[1][SINGLE].shape == (3,)
    with pytest.raises(ModelError, match=r"list of 3 entries \(rows = \"list\"\), got 2 entries"):
        _layout(rows="list").collect([torch.zeros(1)] * 2, 3)


def test_helpers_for_one_tensor_views() -> None:
    t = torch.arange(6.0).view(2, 3)
    parts = as_parts(t)
    assert [torch.equal(p[SINGLE], t[i]) for i, p in enumerate(parts)] == [True, True]
    assert torch.equal(first_output(parts), t)
    assert parts[1:].values == parts.values[1:]


def test_bucket_padding_keeps_the_real_rows_of_structured_outputs() -> None:
    from inferq.worker.variants import BucketedHandler

    def forward(x: torch.Tensor) -> Any:
        return {"a": x[:, 0], "b": x[:, 1]}

    got = BucketedHandler(forward, (4,)).predict(torch.arange(6.0).view(3, 2))
    assert torch.equal(got["a"], torch.tensor([0.0, 2, 4])) and got["b"].shape == (3,)
    pair = BucketedHandler(lambda x: (x, x + 1), (4,)).predict(torch.zeros(3, 2))
    assert [t.shape for t in pair] == [(3, 2), (3, 2)]
    listed = BucketedHandler(lambda x: list(x.unbind(0)), (4,), per_entry=True)
    assert len(listed.predict(torch.zeros(3, 2))) == 3


def test_buckets_and_batch_indexed_rows_are_refused_together() -> None:
    from inferq.shared.errors import ConfigError
    from inferq.shared.spec import parse_config

    with pytest.raises(ConfigError, match=r'batch_buckets pads batches .*rows = "batch_index"'):
        parse_config(
            "m",
            {
                "input": {"shape": [3, 4, 4]},
                "output": {"rows": "batch_index", "batch_index": "i"},
                "optimize": {"batch_buckets": [4, 32]},
            },
        )
