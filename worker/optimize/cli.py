"""The ``inferq models optimize`` command (registered on the ``models`` group in worker/cli.py)."""

from __future__ import annotations

from pathlib import Path

import click

from inferq.shared.settings import get_settings

TARGETS = ("int8", "fp16", "bf16", "compiled")


@click.command("optimize")
@click.argument("model")
@click.option("--from-version", type=click.IntRange(min=1), required=True)
@click.option("--to", "target", type=click.Choice(TARGETS), required=True)
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=".npz with 'inputs' (uint8 NCHW) and optional 'labels'.",
)
@click.option("--version", "to_version", type=click.IntRange(min=1), help="Default: next free.")
@click.option("--min-agreement", type=click.FloatRange(0.0, 1.0), default=0.99, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda:N.")
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="Timed calls per model and batch size.",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--repository", type=click.Path(file_okay=False, path_type=Path), default=None)
def optimize_command(
    model: str,
    from_version: int,
    target: str,
    calibration: Path | None,
    to_version: int | None,
    min_agreement: float,
    device: str,
    seconds: float,
    json_out: Path | None,
    repository: Path | None,
) -> None:
    """Build an int8 / fp16 / bf16 / AOTInductor version of MODEL from --from-version, validated
    against it (top-1 agreement) before it is written, with report.json beside it."""
    from inferq.worker.optimize.command import OptimizeRequest, optimize

    request = OptimizeRequest(
        repository=repository or get_settings().model_repository,
        model=model,
        from_version=from_version,
        target=target,
        to_version=to_version,
        calibration=calibration,
        min_agreement=min_agreement,
        device=device,
        seconds=seconds,
        json_out=json_out,
    )
    report = optimize(request, echo=click.echo)
    click.echo(f"wrote {model} version {report['to_version']} ({report['platform']})")
