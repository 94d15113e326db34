"""``mrsa report RUN_DIR``: write report.md, metrics.json and the plots of a sweep's run folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from mrsa.cli.common import EXIT_USAGE, fail, out_console
from mrsa.cli.options import GpuNameOpt, GpusOpt, setting_option
from mrsa.prices import PriceFileError, PriceSettings, load_optional


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by mrsa bench.")],
    grade_timeout: Annotated[
        float,
        typer.Option(
            help="Time limit of one math-verify call when clustering a round's answers for maj@N, seconds."
        ),
    ] = 10.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
    prices_file: Annotated[Path | None, setting_option(PriceSettings, "prices_file")] = None,
    gpus: GpusOpt = None,
    gpu_name: GpuNameOpt = None,
) -> None:
    """Compute per-round metrics, avg@k over seeds, flags, time and throughput, baselines and the
    comparison with published results of a run folder; write report.md, metrics.json,
    accuracy_vs_tokens.png, problem_grid.png and pareto.png into it. --gpus overrides the hardware
    mrsa bench recorded."""
    from evals.grading import Grader
    from evals.records import RecordLogError
    from evals.report import write_report
    from evals.rundir import RunDir
    from evals.timing import Hardware

    if gpu_name is not None and gpus is None:
        fail("gpu-name: say how many with --gpus N too", EXIT_USAGE)
    if importlib.util.find_spec("matplotlib") is None:
        fail("mrsa report draws its plots with matplotlib: pip install 'mrsa[eval]'")
    try:
        prices = load_optional(prices_file or PriceSettings().prices_file)
    except PriceFileError as exc:
        fail(str(exc), EXIT_USAGE)
    run = RunDir(run_dir)
    if not run.exists():
        fail(
            f"run_dir: {run_dir} holds no manifest.json (not a run folder written by mrsa bench)", EXIT_USAGE
        )
    try:
        with Grader(workers=1, timeout_s=grade_timeout) as grader:
            hardware = Hardware(gpus=gpus, gpu_name=gpu_name) if gpus is not None else None
            data, paths = write_report(run, grader, prices, hardware)
    except (ValidationError, RecordLogError, json.JSONDecodeError) as exc:
        fail(f"run_dir: cannot read {run_dir}: {str(exc).splitlines()[0]}", EXIT_USAGE)
    if json_out:
        sys.stdout.write(data.model_dump_json(exclude={"manifest"}) + "\n")
        return
    out_console.print(
        f"{data.complete}/{data.total} units complete, {data.records} records; wrote "
        + ", ".join(str(p) for p in paths),
        markup=False,
        soft_wrap=True,
    )
