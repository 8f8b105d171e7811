"""``inferq models optimize``: build, validate and write an optimised version of a model.

The result is built in a hidden directory beside the versions, loaded the way a worker loads it
(sha256 checked), compared with its source, and only renamed into ``<model>/<M>`` when its top-1
agreement reaches the threshold, so a worker polling the repository never sees a half-written or
rejected version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from inferq.shared.errors import ConfigError, InferqError
from inferq.shared.spec import ModelConfig
from inferq.worker.handlers import load_handler
from inferq.worker.optimize import data, measure
from inferq.worker.optimize.convert import convert
from inferq.worker.repository import ModelRepository, ModelVersion, record_sha256, verify
from inferq.worker.runner import Runner

REPORT_FILE = "report.json"
Echo = Callable[[str], None]


class OptimizationRejected(InferqError):
    """The optimised model disagrees with its source more than the threshold allows."""

    reason = "optimization_rejected"


@dataclass(frozen=True)
class OptimizeRequest:
    repository: Path
    model: str
    from_version: int
    target: str
    to_version: int | None = None
    calibration: Path | None = None
    min_agreement: float = 0.99
    device: str = "cpu"
    seconds: float = 1.0  # of timed calls per model and batch size
    images: int = 512  # generated when no file gives validation or calibration inputs
    json_out: Path | None = None  # the report, written whether or not the version is


def optimize(req: OptimizeRequest, echo: Echo = print) -> dict[str, Any]:
    """Write the optimised version and return its report; OptimizationRejected (nothing written)
    when the agreement misses the threshold (the ``json_out`` report is written either way)."""
    repo = ModelRepository(req.repository)
    source = repo.resolve(req.model, req.from_version)
    if source.config.platform != "torchscript":
        raise ConfigError(
            f"optimize starts from a torchscript version, got {source.config.platform!r} "
            f"for {req.model} version {req.from_version}"
        )
    if source.config.inputs:
        raise ConfigError(
            f"optimize takes an [input] image model, got {req.model} with [[inputs]] "
            f"({', '.join(i.name for i in source.config.inputs)})"
        )
    to_version = _target_version(repo, req)
    staging = req.repository / req.model / f".optimize-{to_version}-{os.getpid()}"
    staging.mkdir()
    try:
        report = _build_and_compare(req, source, to_version, staging, echo)
        if req.json_out is not None:
            req.json_out.write_text(json.dumps(report, indent=2) + "\n")
        if not report["accepted"]:
            raise OptimizationRejected(_missed(report))
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        os.replace(staging, req.repository / req.model / str(to_version))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _target_version(repo: ModelRepository, req: OptimizeRequest) -> int:
    versions = repo.versions(req.model)
    chosen = req.to_version if req.to_version is not None else max(versions) + 1
    if chosen in versions or chosen < 1:
        raise ConfigError(
            f"--version must be a new version number >= 1 for {req.model}, got {chosen} "
            f"(existing: {versions})"
        )
    return chosen


def _build_and_compare(
    req: OptimizeRequest, source: ModelVersion, to_version: int, staging: Path, echo: Echo
) -> dict[str, Any]:
    device = torch.device(req.device)
    cfg = source.config
    batch = cfg.batching.max_batch_size
    calib = data.calibration_inputs(req.calibration, cfg, req.images)
    calib_batches = list(measure.normalised(calib.images, cfg).to(device).split(batch))
    verify(source.path)
    module = torch.jit.load(str(source.path), map_location=device).eval()
    echo(f"{req.model} v{source.version} -> {req.target} v{to_version} on {device} ...")
    converted = convert(req.target, module, cfg, device, calib_batches, staging)
    echo(f"built: {converted.method}")
    record_sha256(converted.path)
    _write_config(source, staging, converted.platform)
    result = ModelVersion(
        req.model, to_version, converted.path, ModelConfig.load(staging / "config.toml", req.model)
    )
    runners = {name: _runner(mv, device) for name, mv in (("source", source), ("result", result))}
    checked = data.validation_inputs(source.path.parent, req.calibration, cfg, req.images)
    outs = {name: measure.outputs(r, checked.images, batch) for name, r in runners.items()}
    agree = measure.agreement(outs["source"], outs["result"], checked.labels)
    sizes = sorted({1, *cfg.batching.preferred_batch_sizes, batch})
    speed = measure.side_by_side(runners, cfg.shape, sizes, req.seconds)
    report = {
        "model": req.model,
        "from_version": source.version,
        "to_version": to_version,
        "target": req.target,
        "method": converted.method,
        "platform": converted.platform,
        "device": str(device),
        "torch": torch.__version__,
        "calibration": calib.source,
        "validation": checked.source,
        **asdict(agree),
        "agreement_top1": agree.top1,
        "min_agreement": req.min_agreement,
        "accepted": agree.top1 >= req.min_agreement,
        "images_per_s": {name: {str(s): v for s, v in by.items()} for name, by in speed.items()},
        "speedup": speed["result"][batch] / speed["source"][batch],
        "speedup_at": batch,
    }
    _print(report, speed, echo)
    return report


def _runner(mv: ModelVersion, device: torch.device) -> Runner:
    return Runner(load_handler(mv, device), mv.config, mv.version, device, "optimize")


def _write_config(source: ModelVersion, staging: Path, platform: str) -> None:
    """The source's config with the result's platform. Half weights need no autocast (precision
    "fp32"); a compiled package takes no torch.compile on top."""
    model_dir = source.path.parent.parent
    own = source.path.parent / "config.toml"
    text = (own if own.is_file() else model_dir / "config.toml").read_text()
    text = _set_line(text, "platform", f'"{platform}"', top=True)
    text = _set_line(text, "mode", '"fp32"')
    text = _set_line(text, "compile", '"none"')
    (staging / "config.toml").write_text(text)
    for extra in (data.VALIDATION_FILE,):
        if (source.path.parent / extra).is_file():
            shutil.copy2(source.path.parent / extra, staging / extra)


def _set_line(text: str, key: str, value: str, top: bool = False) -> str:
    """``key = value`` in place of the key's line; a missing top-level key goes first (a missing
    table key already has the value wanted, its default)."""
    pattern = re.compile(rf"(?m)^{re.escape(key)}\s*=.*$")
    if pattern.search(text):
        return pattern.sub(f"{key} = {value}", text, count=1)
    return f"{key} = {value}\n{text}" if top else text


def _missed(report: dict[str, Any]) -> str:
    got, wanted = report["agreement_top1"], report["min_agreement"]
    return (
        f"{report['model']} {report['target']}: top-1 agreement with version "
        f"{report['from_version']} must be >= {wanted:.2%}, got {got:.2%} on {report['images']} "
        f"inputs (missed by {wanted - got:.2%}); version {report['to_version']} was not written"
    )


def _print(report: dict[str, Any], speed: dict[str, dict[int, float]], echo: Echo) -> None:
    echo(f"validation: {report['validation']}, {report['images']} inputs")
    echo(
        f"top-1 agreement {report['agreement_top1']:.2%}, largest output difference "
        f"{report['max_abs_diff']:.4g}"
    )
    if report["source_accuracy"] is not None:
        echo(
            f"accuracy: source {report['source_accuracy']:.2%}, result {report['result_accuracy']:.2%}"
        )
    echo("batch   source img/s   result img/s   speedup")
    for size in speed["source"]:
        s, r = speed["source"][size], speed["result"][size]
        echo(f"{size:>5}   {s:>12.1f}   {r:>12.1f}   {r / s:>6.2f}x")
