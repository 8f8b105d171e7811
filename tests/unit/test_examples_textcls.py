"""The token grammar and the text classifier, without the full training."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from inferq.worker.examples.structured import script_bytes, textcls_config
from inferq.worker.examples.textcls import (
    GROUPS,
    MAX_LEN,
    MIN_LEN,
    TEXT_CLASSES,
    TextClassifier,
    TextTraining,
    make_sentences,
    pad_batch,
    text_accuracy,
    train_textcls,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def _groups_in_order(sentence: np.ndarray) -> str:
    return "".join(g for t in sentence for g, (lo, hi) in GROUPS.items() if lo <= t < hi)


def test_sentences_follow_the_grammar() -> None:
    sentences, labels = make_sentences(600, seed=1)
    assert np.bincount(labels).tolist() == [100] * len(TEXT_CLASSES)
    lengths = [len(s) for s in sentences]
    assert min(lengths) == MIN_LEN and max(lengths) == MAX_LEN
    for sentence, label in zip(sentences, labels, strict=True):
        assert sentence.dtype == np.int64 and sentence.min() >= 1
        # Exactly one word of each group, in the class's order: the order is the only signal.
        assert _groups_in_order(sentence) == TEXT_CLASSES[label]


def test_no_token_alone_tells_the_classes_apart() -> None:
    sentences, labels = make_sentences(3000, seed=2)
    counts = np.zeros((len(TEXT_CLASSES), 64))
    for sentence, label in zip(sentences, labels, strict=True):
        np.add.at(counts[label], sentence, 1)
    freq = counts / counts.sum(1, keepdims=True)
    # Every token is about as frequent in every class (the sampling noise of 3000 sentences).
    assert np.abs(freq - freq.mean(0)).max() < 0.004


def _scripted(model: TextClassifier) -> torch.jit.ScriptModule:
    return torch.jit.load(io.BytesIO(script_bytes(model)))


def test_padding_never_changes_the_logits() -> None:
    torch.manual_seed(0)
    model = _scripted(TextClassifier().eval())
    sentences, _ = make_sentences(8, seed=3)
    with torch.no_grad():
        batched = model(*pad_batch(sentences, MAX_LEN))
        shortest = model(*pad_batch(sentences))
        one_by_one = torch.cat([model(*pad_batch([s])) for s in sentences])
    assert batched.shape == (8, len(TEXT_CLASSES))
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shortest, one_by_one, atol=1e-5, rtol=1e-5)


def test_training_loop_fits_a_small_set() -> None:
    # A few seconds: the loop must drive the loss far below chance (ln 6 = 1.79) on 512
    # sentences; generalising takes the full build (tests/unit/test_examples_accuracy.py).
    lines: list[str] = []
    model = train_textcls(TextTraining(train_n=512, epochs=20, batch=32), log=lines.append)
    final = float(lines[-2].rsplit(" ", 1)[1])  # "textcls: epoch 20/20 loss X"
    assert "epoch 20/20" in lines[-2] and final < 0.3
    sentences, labels = make_sentences(512, seed=TextTraining().train_seed)
    assert text_accuracy(model, sentences, labels) > 0.85


def test_config_declares_ids_and_generated_mask() -> None:
    import tomllib

    cfg = tomllib.loads(textcls_config())
    ids, mask = cfg["inputs"]
    assert ids == {
        "name": "input_ids",
        "dtype": "int64",
        "shape": [MAX_LEN],
        "variable": 0,
        "pad_value": 0,
        "buckets": [16, 32, 64],
    }
    assert mask == {"name": "attention_mask", "mask_of": "input_ids", "dtype": "int64"}
    assert cfg["output"]["labels"] == list(TEXT_CLASSES)
    assert "input" not in cfg
