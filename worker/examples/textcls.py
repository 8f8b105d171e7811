"""The ``textcls`` example: a synthetic token grammar and a small transformer classifying it.

Grammar (token ids, vocabulary of 64):

* 0 is padding; 1-8 are *A* words, 9-16 *B* words, 17-24 *C* words, 25-63 filler words.
* A sentence is 4-64 tokens: exactly one A, one B and one C word at random places among fillers.
* Its class is the order in which A, B and C come: ``ABC``, ``ACB``, ``BAC``, ``BCA``, ``CAB``,
  ``CBA``.

Every sentence holds the same multiset of word groups, so no single token and no bag of tokens
tells the classes apart (a bag-of-words model scores chance, 1/6): the model must compare positions.
The net: token + position embeddings, two pre-norm attention blocks whose keys ignore padding,
a mean over real tokens, a linear layer. Padding never changes the result (tests check it), so
a worker may pad a batch to any length up to 64.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

VOCAB = 64
MAX_LEN = 64
MIN_LEN = 4
PAD = 0
GROUPS: dict[str, tuple[int, int]] = {"A": (1, 9), "B": (9, 17), "C": (17, 25)}  # [lo, hi)
FILLER = (25, VOCAB)
TEXT_CLASSES: tuple[str, ...] = tuple("".join(p) for p in itertools.permutations("ABC"))

Log = Callable[[str], None]


def make_sentence(rng: np.random.Generator, label: int) -> np.ndarray:
    """One int64 sentence of class ``TEXT_CLASSES[label]``."""
    length = int(rng.integers(MIN_LEN, MAX_LEN + 1))
    tokens = rng.integers(*FILLER, size=length)
    places = np.sort(rng.choice(length, size=3, replace=False))
    for place, group in zip(places, TEXT_CLASSES[label], strict=True):
        tokens[place] = rng.integers(*GROUPS[group])
    return tokens.astype(np.int64)


def make_sentences(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` sentences with balanced, shuffled labels, deterministic per ``seed``."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % len(TEXT_CLASSES))
    return [make_sentence(rng, int(label)) for label in labels], labels


def pad_batch(sentences: list[np.ndarray], length: int | None = None) -> tuple[Tensor, Tensor]:
    """input_ids and attention_mask (int64 [B, L]), right-padded to ``length`` or the longest."""
    width = length or max(len(s) for s in sentences)
    ids = torch.full((len(sentences), width), PAD, dtype=torch.int64)
    mask = torch.zeros((len(sentences), width), dtype=torch.int64)
    for row, sentence in enumerate(sentences):
        ids[row, : len(sentence)] = torch.from_numpy(sentence)
        mask[row, : len(sentence)] = 1
    return ids, mask


def _sinusoids(length: int, dim: int) -> Tensor:
    place = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-np.log(1000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(place * freq)
    table[:, 1::2] = torch.cos(place * freq)
    return table


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=keep
        )
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class TextClassifier(nn.Module):
    """forward(input_ids int64 [B, L], attention_mask int64 [B, L]) -> logits [B, classes]."""

    def __init__(self, classes: int = len(TEXT_CLASSES), dim: int = 48, heads: int = 4) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, dim)
        # Fixed sinusoidal positions: order is what the classes depend on, and a fixed encoding
        # makes "comes before" learnable from the first step (learned positions idle for epochs).
        # (A frozen parameter rather than a buffer: typed for mypy, and scriptable as is.)
        self.positions = nn.Parameter(_sinusoids(MAX_LEN, dim), requires_grad=False)
        self.blocks = nn.ModuleList([_Block(dim, heads) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        real = attention_mask > 0
        places = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions[places][None]
        keep = real[:, None, None, :]  # every query attends to real tokens only
        for block in self.blocks:
            x = block(x, keep)
        weights = real.unsqueeze(-1).to(x.dtype)
        pooled = (self.norm(x) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.fc(pooled)


@dataclass(frozen=True)
class TextTraining:
    train_n: int = 12000
    epochs: int = 8
    batch: int = 64
    lr: float = 5e-3
    train_seed: int = 3001
    heldout_n: int = 3000
    heldout_seed: int = 9201


def _batches(
    sentences: list[np.ndarray], labels: np.ndarray, batch: int
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Batches of similar lengths (sorted, then cut), so padding stays short; shuffled order."""
    order = np.argsort([len(s) for s in sentences], kind="stable")
    out = []
    for cut in np.array_split(order, max(len(order) // batch, 1)):
        ids, mask = pad_batch([sentences[i] for i in cut])
        out.append((ids, mask, torch.from_numpy(labels[cut])))
    return out


@torch.no_grad()
def text_accuracy(model: nn.Module, sentences: list[np.ndarray], labels: np.ndarray) -> float:
    model.eval()
    correct = sum(
        int((model(ids, mask).argmax(1) == y).sum())
        for ids, mask, y in _batches(sentences, labels, 256)
    )
    return correct / len(labels)


def train_textcls(
    cfg: TextTraining = TextTraining(), seed: int = 0, log: Log = print
) -> TextClassifier:
    start = time.perf_counter()
    torch.manual_seed(seed)
    sentences, labels = make_sentences(cfg.train_n, cfg.train_seed)
    batches = _batches(sentences, labels, cfg.batch)
    log(f"textcls: {cfg.train_n} training sentences in {time.perf_counter() - start:.1f}s")
    model = TextClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * len(batches)
    )
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total = 0.0
        for k in torch.randperm(len(batches)).tolist():
            ids, mask, y = batches[k]
            loss = F.cross_entropy(model(ids, mask), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
        log(f"textcls: epoch {epoch}/{cfg.epochs} loss {total / cfg.train_n:.4f}")
    log(f"textcls: trained in {time.perf_counter() - start:.1f}s")
    return model.eval()


def heldout_sentences(cfg: TextTraining = TextTraining()) -> tuple[list[np.ndarray], np.ndarray]:
    return make_sentences(cfg.heldout_n, cfg.heldout_seed)
