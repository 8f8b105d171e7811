"""Raw throughput of one model's variants side by side in one run: versions (TorchScript, int8,
half weights, AOTInductor) and runtime options (autocast, ``[optimize]`` compile, buckets, CUDA
graphs), each checked against the first variant on the same inputs.

::

    python -m inferq.worker.optimize.compare --model shapes --sizes 1,16,64 \\
        --variant torchscript=1 --variant 'compile-default=1:compile=default,buckets=1;16;64' \\
        --variant aoti=2

A variant is ``NAME=VERSION[:KEY=VALUE,...]``; the keys override the version's config:
``precision`` (fp32, fp16, bf16: autocast), ``compile`` (an ``optimize.compile`` mode),
``buckets`` (``optimize.batch_buckets``, ``;``-separated), ``cuda_graphs`` and
``cudnn_benchmark`` (true or false). Every variant runs with ``max_batch_size`` set to the
largest size measured, and goes through the same checks a worker's load does, so a combination
that cannot work is refused with the worker's message.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from inferq.shared.errors import ConfigError
from inferq.shared.settings import get_settings
from inferq.shared.spec import ModelConfig, parse_config
from inferq.worker.handlers import load_handler
from inferq.worker.optimize import measure
from inferq.worker.repository import ModelRepository, ModelVersion
from inferq.worker.runner import Runner

_KEYS = {
    "precision": ("precision", "mode"),
    "compile": ("optimize", "compile"),
    "buckets": ("optimize", "batch_buckets"),
    "cuda_graphs": ("optimize", "cuda_graphs"),
    "cudnn_benchmark": ("optimize", "cudnn_benchmark"),
}


@dataclass(frozen=True)
class Variant:
    name: str
    version: int
    overrides: tuple[tuple[str, str], ...] = ()


def parse_variant(text: str) -> Variant:
    """``NAME=VERSION[:KEY=VALUE,...]`` (see the module's doc)."""
    name, _, rest = text.partition("=")
    version, _, options = rest.partition(":")
    if not name or not version.isdigit():
        raise ConfigError(f"--variant must be NAME=VERSION[:KEY=VALUE,...], got {text!r}")
    pairs = [opt.partition("=") for opt in options.split(",") if opt]
    unknown = [key for key, _, _ in pairs if key not in _KEYS]
    if unknown:
        raise ConfigError(f"--variant {name}: keys must be among {sorted(_KEYS)}, got {unknown}")
    return Variant(name, int(version), tuple((key, value) for key, _, value in pairs))


def variant_config(
    repo: ModelRepository, model: str, variant: Variant, largest: int
) -> ModelConfig:
    """The version's config with the variant's overrides, parsed (and so checked) anew."""
    version_dir = repo.root / model / str(variant.version)
    own = version_dir / "config.toml"
    data: dict[str, Any] = tomllib.loads(
        (own if own.is_file() else repo.root / model / "config.toml").read_text()
    )
    batching = data.setdefault("batching", {})
    batching["max_batch_size"] = largest
    batching["preferred_batch_sizes"] = []
    for key, value in variant.overrides:
        section, field = _KEYS[key]
        data.setdefault(section, {})[field] = _value(key, value)
    return parse_config(model, data)


def _value(key: str, text: str) -> Any:
    if key == "buckets":
        return [int(size) for size in text.split(";") if size]
    if key in ("cuda_graphs", "cudnn_benchmark"):
        if text not in ("true", "false"):
            raise ConfigError(f"--variant {key} must be true or false, got {text!r}")
        return text == "true"
    return text


def load_runners(
    repo: ModelRepository,
    model: str,
    variants: list[Variant],
    largest: int,
    device: torch.device,
    echo: Any,
) -> dict[str, Runner]:
    runners: dict[str, Runner] = {}
    for variant in variants:
        mv = repo.resolve(model, variant.version)
        config = variant_config(repo, model, variant, largest)
        echo(f"loading {variant.name}: version {mv.version} ({config.platform}) ...")
        mv = ModelVersion(model, mv.version, mv.path, config)
        runners[variant.name] = Runner(load_handler(mv, device), config, mv.version, device, "cmp")
    return runners


def compare(
    repo: ModelRepository,
    model: str,
    variants: list[Variant],
    sizes: list[int],
    device: torch.device,
    seconds: float,
    echo: Any = print,
) -> dict[str, Any]:
    """Images/s of every variant at every size (taking turns per size), and each variant's top-1
    agreement and largest output difference against the first."""
    runners = load_runners(repo, model, variants, max(sizes), device, echo)
    first = next(iter(runners.values()))
    images = np.random.default_rng(7).integers(0, 256, (256, *first.config.shape), dtype=np.uint8)
    outs = {name: measure.outputs(r, images, max(sizes)) for name, r in runners.items()}
    reference = outs[variants[0].name]
    checks = {name: measure.agreement(reference, out, None) for name, out in outs.items()}
    speed = measure.side_by_side(runners, first.config.shape, sizes, seconds)
    report = {
        "model": model,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "variants": {
            v.name: {
                "version": v.version,
                "overrides": dict(v.overrides),
                "images_per_s": {str(s): speed[v.name][s] for s in sizes},
                "top1_vs_first": checks[v.name].top1,
                "max_abs_diff_vs_first": checks[v.name].max_abs_diff,
            }
            for v in variants
        },
    }
    echo(render(report, sizes))
    return report


def profile(runners: dict[str, Runner], size: int, calls: int, top: int, echo: Any) -> None:
    """torch.profiler's top ops (self CPU time) of each runner over ``calls`` forwards at
    ``size``: where an optimised variant gains or loses against its source."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name, runner in runners.items():
        x = torch.randint(0, 256, (size, *runner.config.shape), dtype=torch.uint8)
        x = x.to(runner.device)
        runner._forward(x)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                runner._forward(x)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
        echo(f"{name}, batch {size}, {calls} calls:\n{table}")


def render(report: dict[str, Any], sizes: list[int]) -> str:
    names = list(report["variants"])
    width = max(len(n) for n in names) + 2
    head = f"{'variant':<{width}}" + "".join(f"{'b=' + str(s):>12}" for s in sizes)
    lines = [f"{report['model']} on {report['device']}, images/s", head + "   top-1   max diff"]
    for name in names:
        v = report["variants"][name]
        cells = "".join(f"{v['images_per_s'][str(s)]:>12.1f}" for s in sizes)
        lines.append(
            f"{name:<{width}}{cells}  {v['top1_vs_first']:>6.1%}   {v['max_abs_diff_vs_first']:.3g}"
        )
    return "\n".join(lines)


@click.command()
@click.option("--model", required=True)
@click.option("--variant", "variants", multiple=True, required=True, help="NAME=VERSION[:K=V,..]")
@click.option("--sizes", default="1,16,64", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--seconds", type=click.FloatRange(min=0.0), default=2.0, show_default=True)
@click.option("--repository", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--profile",
    "profile_calls",
    type=click.IntRange(min=0),
    default=0,
    help="Instead of measuring: torch.profiler's top ops over this many calls at the largest size.",
)
def main(
    model: str,
    variants: tuple[str, ...],
    sizes: str,
    device: str,
    seconds: float,
    repository: Path | None,
    json_out: Path | None,
    profile_calls: int,
) -> None:
    """Raw throughput of MODEL's variants side by side, checked against the first."""
    repo = ModelRepository(repository or get_settings().model_repository)
    batch_sizes = sorted({int(s) for s in sizes.split(",") if s})
    parsed = [parse_variant(v) for v in variants]
    if profile_calls:
        dev = torch.device(device)
        runners = load_runners(repo, model, parsed, max(batch_sizes), dev, click.echo)
        profile(runners, max(batch_sizes), profile_calls, 12, click.echo)
        return
    report = compare(repo, model, parsed, batch_sizes, torch.device(device), seconds, click.echo)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
