"""A batch's model outputs, on the CPU, cut into exactly one part per request.

A model may return one tensor, a tuple/list of tensors (named by ``[output] names``), or a dict
of tensors; ``[output] rows`` says how they divide into requests:

* ``dense``: every output has a row per request (``[B, ...]``);
* ``batch_index``: outputs hold rows for the whole batch, in any number per request, and the
  output ``batch_index`` (1-D, or its ``batch_column`` when 2-D) names each row's request; a
  request's rows keep their order, the index itself is dropped;
* ``list``: the model returns a list with one entry (tensor, tuple or dict) per request.

One plain tensor with a row per request stays a tensor (the classifier's path, post-processed
for the whole batch at once); anything else becomes :class:`Parts`, a ``{name: tensor}`` dict per
request. Whatever the layout, the number of parts must equal the number of inputs (Ray Serve's
rule): a model that breaks it raises :class:`ModelError`, so its batch is bisected like any
model failure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from inferq.shared.errors import ModelError
from inferq.shared.outputspec import Output

#: The name of a model's only output when ``[output] names`` gives none.
SINGLE = "output"

Named = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Parts:
    """One ``{name: tensor}`` part per request, in the batch's row order (CPU tensors)."""

    values: list[Named]

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[Named]:
        return iter(self.values)

    def __getitem__(self, index: slice) -> Parts:
        return Parts(self.values[index])


Chunk = torch.Tensor | Parts


class OutputLayout:
    """Built once per model from its ``[output]``; :meth:`collect` runs once per forward."""

    def __init__(self, output: Output) -> None:
        self.names = output.names
        self.rows = output.rows
        self.batch_index = output.batch_index
        self.batch_column = output.batch_column

    def collect(self, out: Any, n: int) -> Chunk:
        """``out`` for ``n`` inputs on the CPU: a tensor (one per row) or :class:`Parts`."""
        if isinstance(out, torch.Tensor) and self.rows == "dense":
            if out.dim() == 0 or out.shape[0] != n:
                raise ModelError(
                    f"model must return one row per input ({n}), got {tuple(out.shape)}"
                )
            return out.cpu()
        parts = self._cut(out, n)
        if len(parts) != n:  # each layout checks; this is the rule itself
            raise ModelError(f"model outputs must give one part per input ({n}), got {len(parts)}")
        return Parts(parts)

    def _cut(self, out: Any, n: int) -> list[Named]:
        if self.rows == "list":
            return self._per_entry(out, n)
        named = self._named(out)
        if self.rows == "batch_index":
            return self._by_index(named, n)
        return _dense(named, n)

    def _named(self, out: Any) -> Named:
        """``out`` as ``{name: CPU tensor}``, floats as float32."""
        if isinstance(out, torch.Tensor):
            return {self.names[0] if self.names else SINGLE: _host(out)}
        if isinstance(out, Mapping):
            return {str(k): _tensor(v, str(k)) for k, v in out.items()}
        if isinstance(out, (tuple, list)):
            if self.names and len(self.names) != len(out):
                raise ModelError(
                    f"model must return {len(self.names)} outputs (output.names "
                    f"{list(self.names)}), got {len(out)}"
                )
            names = self.names or tuple(str(i) for i in range(len(out)))
            return {name: _tensor(v, name) for name, v in zip(names, out, strict=True)}
        raise ModelError(
            "model must return a tensor, a tuple/list of tensors or a dict of tensors, "
            f"got {type(out).__name__}"
        )

    def _per_entry(self, out: Any, n: int) -> list[Named]:
        if not isinstance(out, (tuple, list)) or len(out) != n:
            got = f"{len(out)} entries" if isinstance(out, (tuple, list)) else type(out).__name__
            raise ModelError(f'model must return a list of {n} entries (rows = "list"), got {got}')
        return [self._named(entry) for entry in out]

    def _by_index(self, named: Named, n: int) -> list[Named]:
        index, named = self._index(named)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise ModelError(
                f"output {self.batch_index!r} must hold batch indices in 0..{n - 1}, got "
                f"{int(index.min())}..{int(index.max())}"
            )
        rows = len(index)
        for name, t in named.items():
            if t.dim() == 0 or t.shape[0] != rows:
                raise ModelError(
                    f"output {name!r} must have a row per index row ({rows}), got {tuple(t.shape)}"
                )
        order = torch.argsort(index, stable=True)
        counts = torch.bincount(index, minlength=n).tolist()
        split = {name: t[order].split(counts) for name, t in named.items()}
        return [{name: split[name][i] for name in named} for i in range(n)]

    def _index(self, named: Named) -> tuple[torch.Tensor, Named]:
        """Each row's request, and the outputs without it (the column, or the whole output)."""
        held = named.get(self.batch_index)
        if held is None:
            raise ModelError(
                f"model must return the output {self.batch_index!r} (output.batch_index), got "
                f"{sorted(named)}"
            )
        rest = {k: v for k, v in named.items() if k != self.batch_index}
        if held.dim() == 1:
            return _whole(held, self.batch_index), rest
        col = self.batch_column
        if held.dim() != 2 or col >= held.shape[1]:
            raise ModelError(
                f"output {self.batch_index!r} must be 1-D, or 2-D with column {col} "
                f"(output.batch_column), got {tuple(held.shape)}"
            )
        rest[self.batch_index] = torch.cat((held[:, :col], held[:, col + 1 :]), dim=1)
        return _whole(held[:, col], self.batch_index), rest


def _dense(named: Named, n: int) -> list[Named]:
    for name, t in named.items():
        if t.dim() == 0 or t.shape[0] != n:
            raise ModelError(
                f"output {name!r} must have one row per input ({n}), got {tuple(t.shape)}"
            )
    rows = {name: t.unbind(0) for name, t in named.items()}
    return [{name: rows[name][i] for name in named} for i in range(n)]


def _whole(values: torch.Tensor, name: str) -> torch.Tensor:
    index = values.round().long() if values.is_floating_point() else values.long()
    if values.is_floating_point() and not bool((index == values).all()):
        raise ModelError(f"output {name!r} must hold whole batch indices, got fractions")
    return index


def _tensor(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ModelError(f"model output {name!r} must be a tensor, got {type(value).__name__}")
    return _host(value)


def _host(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    return t.float() if t.is_floating_point() and t.dtype != torch.float32 else t


def as_parts(chunk: Chunk, name: str = SINGLE) -> Parts:
    """A chunk as :class:`Parts` (a plain tensor's rows under ``name``)."""
    if isinstance(chunk, Parts):
        return chunk
    return Parts([{name: row} for row in chunk.unbind(0)])


def only(part: Named, name: str, what: str) -> torch.Tensor:
    """``part[name]``, or its one tensor when it holds only one; ModelError naming the rest."""
    if name in part:
        return part[name]
    if len(part) == 1:
        return next(iter(part.values()))
    raise ModelError(f"{what} needs the model output {name!r}, got outputs {sorted(part)}")


def sizes(chunks: Sequence[Any]) -> list[int]:
    """How many requests each chunk (a tensor, Parts, or one request's error) stands for."""
    return [len(c) if isinstance(c, (torch.Tensor, Parts)) else 1 for c in chunks]


def first_output(chunk: Chunk) -> torch.Tensor:
    """A chunk as one tensor: itself, or its parts' first outputs stacked (what ``topk`` ranks;
    validation and the optimize tools compare it)."""
    if isinstance(chunk, torch.Tensor):
        return chunk
    if not chunk.values:
        return torch.empty(0)
    return torch.stack([next(iter(part.values())) for part in chunk])
