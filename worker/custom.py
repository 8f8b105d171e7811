"""Custom batch hooks: a model's ``[handler]`` names an installed class whose ``preprocess`` and
``postprocess`` run on the worker around the model (README, "Custom processing").

The class comes from an installed package, by entry point (group ``inferq.handlers``) or as
``package.module:Class``; never from the model repository: a name that looks like a path is
refused when the config is read, and a class whose module file lies inside the repository is
refused at load. It is built once per loaded version with ``[handler] options`` as keyword
arguments. Either hook may be left out (or left as :class:`BatchHandler`'s no-op):

* ``preprocess(batch) -> batch``: the normalised float batch on the device, before the model.
  It runs inside the model's forward, so an exception is treated like the model's own: the batch
  is bisected and only the requests whose half-batches keep failing end in :class:`HandlerError`.
* ``postprocess(values, requests) -> values``: the built-in post-processing's values (one per
  request; numpy arrays for ``raw``/``segmentation``) and a :class:`RequestInfo` per request;
  returns one JSON-ready value per request (numpy arrays and torch tensors allowed). An exception,
  or a list of the wrong length, bisects the call in the same way.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch

from inferq.shared.errors import ConfigError, HandlerError, InferqError
from inferq.shared.geometry import Geometry
from inferq.shared.outputspec import HandlerRef

GROUP = "inferq.handlers"


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a postprocess hook learns about each request."""

    task_id: str
    geometry: Geometry | None


class BatchHandler:
    """A base for handler classes: both hooks do nothing until overridden."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        return batch

    def postprocess(self, values: list[Any], requests: Sequence[RequestInfo]) -> list[Any]:
        return values


class HookFailed(Exception):
    """A preprocess hook raised: the runner bisects as for a model error, naming the handler."""


@dataclass(frozen=True)
class HandlerHooks:
    """The hooks a loaded handler overrides (None where it keeps the no-op)."""

    name: str
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None
    postprocess: Callable[[list[Any], Sequence[RequestInfo]], list[Any]] | None

    def run_preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        assert self.preprocess is not None
        try:
            return self.preprocess(batch)
        except Exception as exc:
            raise HookFailed(f"{type(exc).__name__}: {exc}") from exc

    def finish(self, values: list[Any], requests: Sequence[Any]) -> list[Any]:
        """``values`` (one per request in ``requests``, an InferqError where it already failed)
        through ``postprocess``: the hook sees only the requests still standing."""
        standing = [i for i, v in enumerate(values) if not isinstance(v, InferqError)]
        if not standing:
            return values
        infos = [RequestInfo(requests[i].task_id, requests[i].geometry) for i in standing]
        done = self.run_postprocess([values[i] for i in standing], infos)
        out = list(values)
        for i, value in zip(standing, done, strict=True):
            out[i] = value
        return out

    def run_postprocess(self, values: list[Any], requests: Sequence[RequestInfo]) -> list[Any]:
        """One value (or :class:`HandlerError`) per request: a failing call is bisected until
        only the requests that fail alone are left."""
        assert self.postprocess is not None
        try:
            out = self.postprocess(list(values), list(requests))
            if not isinstance(out, list) or len(out) != len(values):
                got = len(out) if isinstance(out, list) else type(out).__name__
                raise ValueError(
                    f"postprocess must return a list of {len(values)} values, got {got}"
                )
            return [plain(v) for v in out]
        except Exception as exc:
            if len(values) == 1:
                return [self.error("postprocess", exc)]
            half = len(values) // 2
            return self.run_postprocess(values[:half], requests[:half]) + self.run_postprocess(
                values[half:], requests[half:]
            )

    def error(self, hook: str, exc: BaseException) -> HandlerError:
        detail = str(exc) if isinstance(exc, HookFailed) else f"{type(exc).__name__}: {exc}"
        return HandlerError(
            f"handler {self.name!r} {hook} must succeed for this request, got {detail}"
        )


def plain(value: Any) -> Any:
    """``value`` with torch tensors as numpy arrays (results carry arrays, not tensors)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def load_hooks(ref: HandlerRef | None, repository: Path | None = None) -> HandlerHooks | None:
    """The hooks of ``ref``'s class, built with its options; ConfigError saying what is wrong."""
    if ref is None:
        return None
    cls = _resolve(ref.name)
    _refuse_repository_code(cls, ref.name, repository)
    try:
        handler = cls(**ref.options)
    except Exception as exc:
        raise ConfigError(
            f"handler {ref.name!r} must build from handler.options {ref.options}, got "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return HandlerHooks(ref.name, _hook(handler, "preprocess"), _hook(handler, "postprocess"))


def _hook(handler: Any, name: str) -> Any:
    method = getattr(handler, name, None)
    if method is None or getattr(type(handler), name, None) is getattr(BatchHandler, name):
        return None  # absent or the no-op: the model's path stays as without a handler
    if not callable(method):
        raise ConfigError(f"handler {type(handler).__name__}.{name} must be a method")
    return method


def _resolve(name: str) -> Any:
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"handler {name!r} must name an importable class of an installed package, got "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return obj
    found = entry_points(group=GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=GROUP))
        raise ConfigError(
            f"handler {name!r} must be an entry point in group {GROUP!r} (installed: {known}) "
            "or 'package.module:Class'"
        )
    return next(iter(found)).load()


def _refuse_repository_code(cls: Any, name: str, repository: Path | None) -> None:
    if not inspect.isclass(cls):
        raise ConfigError(f"handler {name!r} must name a class, got {type(cls).__name__}")
    if repository is None:
        return
    try:
        source = Path(inspect.getfile(cls)).resolve()
    except (TypeError, OSError):
        return  # built in: not from the repository
    if source.is_relative_to(repository.resolve()):
        raise ConfigError(
            f"handler {name!r} must come from an installed package, got code inside the model "
            f"repository ({source}): model repositories never carry code"
        )
