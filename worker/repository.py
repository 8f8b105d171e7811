"""A Triton-like model repository on disk.

::

    <repo>/<model>/config.toml
    <repo>/<model>/<version>/model.pt          (TorchScript)  or  model.onnx
    <repo>/<model>/<version>/model.pt.sha256   ("<hex>  model.pt", as sha256sum writes it)
    <repo>/<model>/<version>/config.toml       (optional: this version's own, e.g. an optimised one)

Model files: ``model.pt`` (TorchScript), ``model.onnx`` (onnxruntime), ``model.pt2`` (a
``torch.export`` program) and ``model.aoti.pt2`` (an AOTInductor package).

The highest version is served unless one is asked for. Every model file is checked against its
recorded sha256 before it is loaded; a missing or wrong digest refuses the load.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from inferq.shared.errors import IntegrityError, ModelUnavailable
from inferq.shared.policy import VersionRecord
from inferq.shared.spec import ModelConfig

MODEL_FILES = {
    "torchscript": "model.pt",
    "onnx": "model.onnx",
    "exported": "model.pt2",
    "aoti": "model.aoti.pt2",
}


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path  # the model file
    config: ModelConfig


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def published_version(mv: ModelVersion, now: float | None = None) -> VersionRecord:
    """What the registry records of ``mv``, once its model file matches its recorded sha256."""
    config = mv.path.parent.parent / "config.toml"
    return VersionRecord(
        version=mv.version,
        spec=mv.config.input_spec(mv.version),
        config_sha256=hashlib.sha256(config.read_bytes()).hexdigest(),
        model_sha256=verify(mv.path),
        platform=mv.config.platform,
        published_at=time.time() if now is None else now,
    )


def record_sha256(path: Path) -> str:
    """Write ``<file>.sha256`` beside ``path``; returns the digest."""
    digest = sha256_of(path)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    return digest


def verify(path: Path) -> str:
    """The file's digest if it matches the recorded one; IntegrityError otherwise."""
    sidecar = path.with_name(path.name + ".sha256")
    try:
        recorded = sidecar.read_text().split()[0].lower()
    except (OSError, IndexError):
        raise IntegrityError(
            f"model file {path} must have its sha256 recorded in {sidecar.name}, got none"
        ) from None
    actual = sha256_of(path)
    if actual != recorded:
        raise IntegrityError(
            f"model file {path} must have sha256 {recorded} (recorded), got {actual}: refusing to load"
        )
    return actual


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "config.toml").is_file())

    def versions(self, name: str) -> list[int]:
        model_dir = self.root / name
        if not model_dir.is_dir():
            return []
        return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def config(self, name: str, version: int | None = None) -> ModelConfig:
        """The model's config; a version's own config.toml (an optimised version's platform and
        precision differ from its source's) replaces the model's for that version."""
        own = self.root / name / str(version) / "config.toml"
        if version is not None and own.is_file():
            return ModelConfig.load(own, name=name)
        path = self.root / name / "config.toml"
        if not path.is_file():
            raise ModelUnavailable(
                f"model must be one of {self.models() or 'none'} in repository {self.root}, got {name!r}"
            )
        return ModelConfig.load(path)

    def resolve(self, name: str, version: int | None = None) -> ModelVersion:
        self.config(name)  # names the known models when this one is missing
        versions = self.versions(name)
        if not versions or (version is not None and version not in versions):
            wanted = "any version" if version is None else f"version {version}"
            raise ModelUnavailable(
                f"model {name!r} must have {wanted} in {self.root / name}, got {versions}"
            )
        chosen = versions[-1] if version is None else version
        config = self.config(name, chosen)
        path = self.root / name / str(chosen) / MODEL_FILES[config.platform]
        if not path.is_file():
            raise ModelUnavailable(
                f"model {name!r} version {chosen} must contain {path.name}, got none"
            )
        return ModelVersion(name, chosen, path, config)
