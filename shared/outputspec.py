"""A model's ``[output]`` and ``[handler]`` tables: what comes out, how it is cut per request and
post-processed, and which installed handler class adds batch hooks (``worker/custom.py``).

``shared/spec.py`` reads the rest of a config and calls :func:`parse_output` and
:func:`parse_handler`; every refusal names the key, what was expected and what came.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from inferq.shared.errors import ConfigError
from inferq.shared.tomlcheck import check_keys, choice, integer, share, string, strings

POSTPROCESS = ("topk", "raw", "detection", "segmentation")
#: How a batch's outputs divide into requests: ``dense``, a row per request in every output;
#: ``batch_index``, rows for the whole batch with a column naming each row's request; ``list``, a
#: list with one entry (tensor, tuple or dict) per request.
ROW_LAYOUTS = ("dense", "batch_index", "list")

OUTPUT_KEYS: dict[str, tuple[str, ...]] = {
    "output": (
        "postprocess",
        "top_k",
        "labels",
        "names",
        "rows",
        "batch_index",
        "batch_column",
        "follows",
        "detection",
        "segmentation",
    ),
    "detection": ("boxes", "scores", "score_threshold", "iou_threshold", "max_detections"),
    "segmentation": ("logits",),
    "handler": ("name", "options"),
}


@dataclass(frozen=True)
class Detection:
    """``[output.detection]``: boxes xyxy in the model input's pixels, per-class scores."""

    boxes: str = "boxes"
    scores: str = "scores"
    score_threshold: float = 0.3
    iou_threshold: float = 0.5
    max_detections: int = 100


@dataclass(frozen=True)
class Segmentation:
    """``[output.segmentation]``: the output holding ``[C, H, W]`` logits per request."""

    logits: str = "logits"


@dataclass(frozen=True)
class Output:
    postprocess: str = "topk"
    top_k: int = 5
    labels: tuple[str, ...] = ()
    #: Names of a tuple output's members, in order (a dict output names its own).
    names: tuple[str, ...] = ()
    rows: str = "dense"
    #: ``rows = "batch_index"``: the output holding each row's request, and its column when
    #: that output is 2-D (the column is dropped from the request's rows).
    batch_index: str = ""
    batch_column: int = 0
    #: An input whose variable dimension the outputs follow: each request's output rows are cut
    #: back to that input's length (``worker/padding.py``).
    follows: str = ""
    detection: Detection = field(default_factory=Detection)
    segmentation: Segmentation = field(default_factory=Segmentation)

    @property
    def needs_geometry(self) -> bool:
        """Whether requests must carry the producer's resize geometry (coordinates mapped back)."""
        return self.postprocess in ("detection", "segmentation")


@dataclass(frozen=True)
class HandlerRef:
    """``[handler]``: an installed class with batch hooks, by entry-point name (group
    ``inferq.handlers``) or ``package.module:Class``; ``options`` go to its constructor."""

    name: str
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)


def parse_output(out: dict[str, Any]) -> Output:
    top_k = integer(out.get("top_k", 5), "output.top_k")
    if top_k < 1:
        raise ConfigError(f"output.top_k must be >= 1, got {top_k}")
    output = Output(
        postprocess=choice(out.get("postprocess", "topk"), POSTPROCESS, "output.postprocess"),
        top_k=top_k,
        labels=strings(out.get("labels", []), "output.labels"),
        names=_names(out.get("names", [])),
        rows=choice(out.get("rows", "dense"), ROW_LAYOUTS, "output.rows"),
        batch_index=string(out.get("batch_index", ""), "output.batch_index"),
        batch_column=integer(out.get("batch_column", 0), "output.batch_column"),
        follows=string(out.get("follows", ""), "output.follows"),
        detection=_detection(_table(out, "detection")),
        segmentation=Segmentation(
            string(
                _table(out, "segmentation").get("logits", "logits"), "output.segmentation.logits"
            )
        ),
    )
    _check(output, out)
    return output


def _names(value: Any) -> tuple[str, ...]:
    names = strings(value, "output.names")
    if len(set(names)) != len(names) or any(not n for n in names):
        raise ConfigError(f"output.names must be distinct non-empty names, got {list(names)}")
    return names


def _table(out: dict[str, Any], name: str) -> dict[str, Any]:
    value = out.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[output.{name}] must be a table, got {type(value).__name__}")
    check_keys(value, name, OUTPUT_KEYS)
    return value


def _detection(d: dict[str, Any]) -> Detection:
    most = integer(d.get("max_detections", 100), "output.detection.max_detections")
    if most < 1:
        raise ConfigError(f"output.detection.max_detections must be >= 1, got {most}")
    return Detection(
        boxes=string(d.get("boxes", "boxes"), "output.detection.boxes"),
        scores=string(d.get("scores", "scores"), "output.detection.scores"),
        score_threshold=share(d.get("score_threshold", 0.3), "output.detection.score_threshold"),
        iou_threshold=share(d.get("iou_threshold", 0.5), "output.detection.iou_threshold"),
        max_detections=most,
    )


def _check(o: Output, raw: dict[str, Any]) -> None:
    if o.rows == "batch_index" and not o.batch_index:
        raise ConfigError(
            'output.rows = "batch_index" needs output.batch_index: the output holding each '
            "row's request"
        )
    if o.rows != "batch_index" and ("batch_index" in raw or "batch_column" in raw):
        raise ConfigError(
            f'output.batch_index/batch_column apply to rows = "batch_index", got rows = {o.rows!r}'
        )
    if o.batch_column < 0:
        raise ConfigError(f"output.batch_column must be >= 0, got {o.batch_column}")
    for kind in ("detection", "segmentation"):
        if kind in raw and o.postprocess != kind:
            raise ConfigError(
                f'[output.{kind}] applies to postprocess = "{kind}", got {o.postprocess!r}'
            )
    if o.postprocess == "detection" and not o.labels:
        raise ConfigError('postprocess = "detection" needs output.labels, one per score column')


#: A handler reference is an import name: dotted identifiers, optionally ``:Class``.
_IMPORT_NAME = re.compile(r"[A-Za-z_][\w.-]*(:[A-Za-z_][\w.]*)?")


def parse_handler(table: dict[str, Any]) -> HandlerRef | None:
    if not table:
        return None
    name = string(table.get("name", ""), "handler.name")
    if not _IMPORT_NAME.fullmatch(name) or name.endswith(".py"):
        raise ConfigError(
            "handler.name must name an installed handler (an entry point in group "
            f"'inferq.handlers', or 'package.module:Class'), not a path, got {name!r}: model "
            "repositories never carry code"
        )
    options = table.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"handler.options must be a table, got {type(options).__name__}")
    return HandlerRef(name, dict(options))
