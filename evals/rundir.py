"""A sweep's run folder: ``manifest.json`` (what was run, on what, by which code) and
``records.jsonl`` (the graded candidates), plus the report files ``mrsa report`` writes.

Running ``mrsa bench`` again on the same folder resumes it. It may also extend it (more seeds,
problems or configurations); it refuses to mix results that are not comparable: another model, a
configuration id whose parameters changed, or a dataset file whose contents changed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from evals.configs import SweepConfig
from evals.datasets import Dataset
from evals.failures import FailureLog
from evals.records import RecordLog, UnitKey

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
FAILURES = "failures.jsonl"
REPORT = "report.md"
METRICS = "metrics.json"


class ManifestConflict(ValueError):
    """This sweep cannot share the run folder with the results already in it."""


class BackendEntry(BaseModel):
    url: str
    kind: str
    model: str | None = None
    version: str | None = Field(None, description="Server version, where the server reports one.")
    capacity: int = 1
    context_length: int | None = None


class DatasetEntry(BaseModel):
    name: str
    path: str
    sha256: str
    problems: list[str] = Field(description="Ids of the problems in the sweep, in file order.")


class Session(BaseModel):
    """One invocation of ``mrsa bench`` on this folder."""

    started_at: float
    finished_at: float | None = None
    status: Literal["running", "completed", "interrupted", "failed"] = "running"
    backend: BackendEntry
    mrsa_version: str
    git_revision: str | None
    store: str = Field("memory", description="'memory', or the Redis URL (password redacted).")
    new_records: int = 0
    failed_units: int = 0
    gpus: int | None = Field(None, description="GPUs serving the model, as the user stated (--gpus).")
    gpu_name: str | None = Field(None, description="Their kind, as the user stated (--gpu-name).")


class Manifest(BaseModel):
    format: int = 1
    run_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex[:12],
        description="Names this sweep's jobs in a shared store (Redis).",
    )
    model: str | None = Field(None, description="The model every record comes from.")
    seeds: list[int]
    configs: list[SweepConfig]
    datasets: list[DatasetEntry]
    grading: dict[str, str | float | int]
    sessions: list[Session] = Field(default_factory=list)

    def units(self) -> list[UnitKey]:
        """Every unit of the sweep: seeds × datasets × problems × configurations."""
        return [
            UnitKey(config.id, ds.name, problem, seed)
            for seed in self.seeds
            for ds in self.datasets
            for problem in ds.problems
            for config in self.configs
        ]

    def config(self, config_id: str) -> SweepConfig:
        return next(c for c in self.configs if c.id == config_id)


def mrsa_version() -> str:
    try:
        return importlib.metadata.version("mrsa")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def git_revision() -> str | None:
    """The commit of the mrsa source this runs from (``+dirty`` with local changes), or ``None``
    outside a git checkout (an installed wheel)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def dataset_entry(ds: Dataset, limit: int | None) -> DatasetEntry:
    problems = ds.problems[:limit] if limit is not None else ds.problems
    return DatasetEntry(name=ds.name, path=ds.path, sha256=ds.sha256, problems=[p.id for p in problems])


def merge(old: Manifest, new: Manifest) -> Manifest:
    """``old`` extended by ``new``; raises :class:`ManifestConflict` when they are not comparable."""
    if old.model is not None and new.model is not None and old.model != new.model:
        raise ManifestConflict(
            f"out: the run folder holds results of model {old.model!r} but the backend serves "
            f"{new.model!r}; use another --out folder"
        )
    configs = {c.id: c for c in old.configs}
    for c in new.configs:
        prev = configs.get(c.id)
        if prev is not None and prev.params != c.params:
            raise ManifestConflict(
                f"out: configuration {c.id!r} in the run folder has other parameters "
                "(the preset changed?); use another --out folder"
            )
        configs.setdefault(c.id, c)
    datasets = {d.name: d for d in old.datasets}
    for d in new.datasets:
        prev_ds = datasets.get(d.name)
        if prev_ds is None:
            datasets[d.name] = d
            continue
        if prev_ds.sha256 != d.sha256:
            raise ManifestConflict(
                f"out: dataset {d.name!r} changed since the run folder was made (sha256 differs); "
                "use another --out folder"
            )
        merged = list(dict.fromkeys([*prev_ds.problems, *d.problems]))
        datasets[d.name] = prev_ds.model_copy(update={"problems": merged})
    return old.model_copy(
        update={
            "model": old.model or new.model,
            "seeds": list(dict.fromkeys([*old.seeds, *new.seeds])),
            "configs": list(configs.values()),
            "datasets": list(datasets.values()),
        }
    )


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = RecordLog(path / RECORDS)
        self.failures = FailureLog(path / FAILURES)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def load_manifest(self) -> Manifest:
        return Manifest.model_validate_json(self.manifest_path.read_text(encoding="utf-8"))

    def save_manifest(self, manifest: Manifest) -> None:
        """Write atomically (a kill mid-write leaves the previous manifest)."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.manifest_path)

    def end_session(
        self,
        started_at: float | None,
        status: Literal["completed", "interrupted", "failed"],
        new: int,
        failed: int,
    ) -> None:
        """Close the session that started at ``started_at`` (``None``: this process opened none)."""
        if started_at is None:
            return
        with contextlib.suppress(OSError, ValueError):
            manifest = self.load_manifest()
            for i, session in enumerate(manifest.sessions):
                if session.started_at == started_at:
                    update = {
                        "finished_at": time.time(),
                        "status": status,
                        "new_records": new,
                        "failed_units": failed,
                    }
                    manifest.sessions[i] = session.model_copy(update=update)
                    self.save_manifest(manifest)
                    return
