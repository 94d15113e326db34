"""``python -m testkit.simulator``: serve the simulated vLLM server on loopback.

    .venv/bin/python -m testkit.simulator --port 8100 --max-num-seqs 64 --trace occupancy.csv

The occupancy trace (time, running, waiting) is written as CSV on exit when ``--trace`` is given,
and is always readable at ``GET /sim/trace``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path

import uvicorn

from .model import SimConfig
from .server import create_app


def parse_config(argv: list[str] | None = None) -> tuple[SimConfig, argparse.Namespace]:
    defaults = SimConfig()
    parser = argparse.ArgumentParser(prog="python -m testkit.simulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--trace", type=Path, help="write the batch occupancy trace here (CSV) on exit")
    for f in dataclasses.fields(SimConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true", default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value, help=f"default {value}")
    args = parser.parse_args(argv)
    config = SimConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SimConfig)})
    if config.max_num_seqs < 1 or config.step_base_ms < 0 or config.step_per_seq_ms < 0:
        parser.error("max-num-seqs must be ≥ 1 and step times ≥ 0")
    return config, args


def main(argv: list[str] | None = None) -> None:
    config, args = parse_config(argv)
    app = create_app(config)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    finally:
        sched = getattr(app.state, "scheduler", None)
        if args.trace is not None and sched is not None:
            with args.trace.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["t_s", "running", "waiting"])
                writer.writerows(sched.trace)


if __name__ == "__main__":
    main()
