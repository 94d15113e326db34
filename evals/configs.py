"""Sweep configurations: presets × an optional parameter grid, each validated up front.

``--grid 'rounds=0,1;subset=1,2'`` is the Cartesian product of the listed values, applied on top of
every ``--preset``. A configuration's id names its preset and grid values (``smoke`` or
``smoke:rounds=0,subset=1``), so it is stable across runs and a resumed sweep finds its records.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from mrsa.engine.prompts import UnknownPromptSetError, check_prompt_set
from mrsa.params import (
    RSAParams,
    UnknownPresetError,
    describe_validation_error,
    knobs,
    nest_overrides,
    resolve_params,
)

# Knobs a grid may vary (flat, as the CLI's flags). ``seed`` comes from --seeds; ``selection`` is
# fixed to ``population`` (a sweep keeps every candidate and scores majority voting itself, as maj@N).
# Adaptive compute cannot be swept: a sweep scores every round of every job, and a job that stops
# early has rounds that never ran (benchmarks/adaptive.py measures it instead).
ADAPTIVE_KEYS: tuple[str, ...] = ("stop_agreement", "stop_min_round", "stop_max_truncated", "token_budget")
GRID_KEYS: tuple[str, ...] = tuple(
    k for k in knobs(RSAParams) if k not in ("seed", "selection", *ADAPTIVE_KEYS)
)
_INT = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")


class ConfigError(ValueError):
    """A sweep configuration that cannot run (bad grid, unknown preset, invalid parameters)."""


class SweepConfig(BaseModel):
    id: str
    preset: str
    overrides: dict[str, Any]
    params: RSAParams


def _value(text: str) -> Any:
    text = text.strip()
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    if text.lower() in ("none", "null", "off"):
        return None
    return text


def parse_grid(text: str | None) -> list[dict[str, Any]]:
    """The points of a grid expression, in the order written (last key varies fastest)."""
    if text is None or not text.strip():
        return [{}]
    axes: dict[str, list[Any]] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, sep, values = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise ConfigError(f"grid: {part.strip()!r} is not KEY=V1,V2,… (e.g. 'rounds=0,1;subset=1,2')")
        if key in ADAPTIVE_KEYS:
            raise ConfigError(
                f"grid: {key!r} is adaptive compute, which a sweep cannot score (it needs every round of "
                "every job); measure it with benchmarks/adaptive.py"
            )
        if key not in GRID_KEYS:
            hint = " (use --seeds)" if key == "seed" else ""
            raise ConfigError(f"grid: unknown key {key!r}{hint}; choose from {', '.join(GRID_KEYS)}")
        if key in axes:
            raise ConfigError(f"grid: key {key!r} given twice")
        parsed = [_value(v) for v in values.split(",") if v.strip()]
        if not parsed:
            raise ConfigError(f"grid: no values for {key!r}")
        axes[key] = list(dict.fromkeys(parsed))
    keys = list(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes.values())]


def config_id(preset: str, point: dict[str, Any]) -> str:
    if not point:
        return preset
    return f"{preset}:" + ",".join(f"{k}={'none' if v is None else v}" for k, v in point.items())


def _resolve(preset: str, point: dict[str, Any]) -> RSAParams:
    overrides = {**nest_overrides(point, RSAParams), "selection": "population", "seed": 0}
    # resolve_params ignores None overrides; an explicit "chunk=none" means off.
    params = resolve_params(preset, overrides)
    if "chunk" in point and point["chunk"] is None:
        params = RSAParams.model_validate({**params.model_dump(), "chunk": None, "carryover": None})
    return params


def build_configs(presets: Sequence[str], grid: str | None = None) -> list[SweepConfig]:
    """Every preset × grid point, validated; raises :class:`ConfigError` naming the first bad one."""
    points = parse_grid(grid)
    out: dict[str, SweepConfig] = {}
    for preset in presets:
        for point in points:
            cid = config_id(preset, point)
            try:
                params = _resolve(preset, point)
                check_prompt_set(params.prompts)
            except (UnknownPresetError, UnknownPromptSetError) as exc:
                raise ConfigError(str(exc)) from None
            except ValidationError as exc:
                raise ConfigError(f"config {cid}: {describe_validation_error(exc)}") from None
            out.setdefault(cid, SweepConfig(id=cid, preset=preset, overrides=point, params=params))
    return list(out.values())
