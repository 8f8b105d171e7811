"""worker/padding.py and the named-tensor collator (worker/tensor_inputs.py): padded lengths,
buckets, padding, generated masks, outputs cut back per request."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inferq.shared.errors import ModelError
from inferq.shared.inputs import TensorInput
from inferq.worker.padding import batch_shape, cut_back, mask, pad_into, padded_length
from inferq.worker.tensor_inputs import TensorCollator

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CPU = torch.device("cpu")


def test_padded_length_is_the_longest_or_the_next_bucket() -> None:
    assert padded_length([3, 7, 5], ()) == 7
    assert padded_length([3, 7, 5], (4, 8, 16)) == 8
    assert padded_length([8], (4, 8, 16)) == 8
    assert padded_length([17], (4, 8, 16)) == 17  # past the last bucket: the longest


def test_pad_into_pads_the_variable_dimension_with_the_pad_value() -> None:
    out = np.empty(batch_shape((2, 6), 1, 3, 2), dtype=np.int64)
    pad_into(out, [np.full((2, 1), 5), np.full((2, 3), 6)], 1, -1)
    assert out.tolist() == [[[5, -1, -1], [5, -1, -1]], [[6, 6, 6], [6, 6, 6]]]


def test_mask_marks_each_requests_own_positions() -> None:
    out = np.empty((3, 4), dtype=np.bool_)
    mask([1, 4, 2], 4, out)
    assert out.astype(int).tolist() == [[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]


def test_cut_back_gives_each_row_its_length_and_refuses_a_short_output() -> None:
    out = torch.arange(2 * 4 * 3).reshape(2, 4, 3)
    rows = cut_back(out, [1, 3])
    assert [r.shape for r in rows] == [(1, 3), (3, 3)]
    assert torch.equal(rows[1], out[1, :3])
    assert [r.shape for r in cut_back(out.transpose(1, 2), [2, 1], dim=1)] == [(3, 2), (3, 1)]
    with pytest.raises(ModelError, match="at least 5 positions along its dimension 1"):
        cut_back(out, [5, 1])


def test_the_collator_stages_padded_inputs_and_the_generated_mask() -> None:
    inputs = (
        TensorInput("ids", "int64", (8,), 0, pad_value=9, buckets=(4, 8)),
        TensorInput("flags", "bool", (2,)),
        TensorInput("mask", "float32", (8,), 0, mask_of="ids"),
    )
    collator = TensorCollator(inputs, max_batch_size=4, device=CPU, slots=2)
    rows = [(np.array([1, 2]), np.array([True, False])), (np.array([3, 4, 5]), np.ones(2, bool))]
    ids, flags, m = collator.claim(collator.stage(rows)).tensors
    assert ids.tolist() == [[1, 2, 9, 9], [3, 4, 5, 9]]  # padded to the bucket of 4
    assert flags.tolist() == [[True, False], [True, True]]
    assert m.dtype == torch.float32 and m.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]
    assert ids.is_contiguous() and m.is_contiguous()
    many = collator.stage([rows[0]] * 6).x  # more than the configured batch: a one-off buffer
    assert len(many) == 6 and many[2:4].tensors[0].shape == (2, 4)
