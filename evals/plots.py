"""The report's PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from evals.accuracy import RoundMetrics
from evals.pareto import ParetoPoint, front

ACCURACY_PNG = "accuracy_vs_tokens.png"
GRID_PNG = "problem_grid.png"
PARETO_PNG = "pareto.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_vs_tokens(series: dict[str, dict[str, list[RoundMetrics]]], path: Path) -> Path:
    """One panel per dataset; in each, one line per configuration through its rounds: x = mean
    cumulative decode tokens per problem, y = pass@1 with its 95% interval (error bars), and maj@N
    dashed."""
    plt = _pyplot()
    datasets = sorted({d for by_ds in series.values() for d, m in by_ds.items() if m})
    width = 6.4 * max(1, len(datasets))
    height = 4.8 + 0.25 * len(series)  # room for the legend below the panels
    fig, axes = plt.subplots(
        1, max(1, len(datasets)), figsize=(width, height), squeeze=False, layout="constrained"
    )
    colours = plt.get_cmap("tab10")
    for ax, dataset in zip(axes[0], datasets, strict=False):
        xs_all: list[float] = []
        for n, (config, by_ds) in enumerate(series.items()):
            metrics = by_ds.get(dataset) or []
            if not metrics:
                continue
            colour = colours(n % 10)
            xs = [m.decode_tokens for m in metrics]
            xs_all.extend(xs)
            ys = [100 * m.pass1.value for m in metrics]
            err = [
                [100 * (m.pass1.value - m.pass1.low) for m in metrics],
                [100 * (m.pass1.high - m.pass1.value) for m in metrics],
            ]
            ax.errorbar(
                xs, ys, yerr=err, color=colour, marker="o", capsize=4, label=f"{config}: pass@1 (95% CI)"
            )
            ax.plot(
                xs,
                [100 * m.maj.value for m in metrics],
                color=colour,
                linestyle="--",
                marker="s",
                markerfacecolor="none",
                label=f"{config}: maj@N",
            )
            for m, x, y in zip(metrics, xs, ys, strict=True):
                ax.annotate(f"r{m.round}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 20:
            ax.set_xscale("log")
        ax.set_ylim(-3, 103)
        ax.set_xlabel("decode tokens per problem run, cumulative over rounds (mean, tokens)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{dataset}: accuracy vs decode tokens by round")
        ax.grid(alpha=0.3)
    if datasets:
        handles, labels = axes[0][0].get_legend_handles_labels()
        for ax in axes[0][1:]:  # a configuration missing from the first panel
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8)
    else:
        axes[0][0].text(0.5, 0.5, "no complete units yet", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def problem_grid(
    grids: dict[str, dict[str, dict[str, list[float]]]],
    path: Path,
    letters: dict[str, dict[str, dict[str, list[str]]]] | None = None,
) -> Path:
    """Per dataset, a heat map: one row per problem, one column per (configuration, round), colour
    = fraction of that round's candidates that are correct (mean over seeds). ``letters`` (config →
    dataset → problem → per round, :func:`evals.flags.cell_letters`) are written in the cells
    (a red corner mark instead when the grid is too large for text); a problem with no complete run
    is a blank row that still shows its flags."""
    letters = letters or {}
    plt = _pyplot()
    import numpy as np

    datasets = sorted({d for by_ds in grids.values() for d, g in by_ds.items() if g})
    heights = []
    for d in datasets:
        count = len({p for by_ds in grids.values() for p in by_ds.get(d, {})})
        longest = max((len(c) for c, by_ds in grids.items() if by_ds.get(d)), default=0)
        heights.append(0.32 * count + 1.2 + 0.055 * longest)  # rows + title + rotated labels
    columns = max(
        (
            sum(min((len(v) for v in by_ds.get(d, {}).values()), default=0) for by_ds in grids.values())
            for d in datasets
        ),
        default=1,
    )
    fig_w = max(6.0, 1.1 * max(columns, 1) + 3.5)
    fig, axes = plt.subplots(
        max(1, len(datasets)),
        1,
        figsize=(fig_w, sum(heights) if heights else 3.0),
        squeeze=False,
        layout="constrained",
        gridspec_kw={"height_ratios": heights} if heights else None,
    )
    image = None
    for ax, dataset in zip(axes[:, 0], datasets, strict=False):
        labels: list[str] = []
        cols: list[dict[str, float]] = []
        bounds: list[int] = []
        marks: list[dict[str, str]] = []
        order: list[str] = []  # every problem of the sweep, in dataset order (from the flags)
        for config, by_ds in grids.items():
            grid = by_ds.get(dataset) or {}
            flagged = letters.get(config, {}).get(dataset, {})
            order.extend(flagged)
            if not grid:
                continue
            rounds = min(len(v) for v in grid.values())
            for r in range(rounds):
                labels.append(f"{config} · r{r}")
                cols.append({p: v[r] for p, v in grid.items()})
                marks.append({p: v[r] for p, v in flagged.items() if r < len(v) and v[r]})
            bounds.append(len(labels))
        shown = {p for col in cols for p in col} | {p for m in marks for p in m}
        problems = [p for p in dict.fromkeys([*order, *(p for col in cols for p in col)]) if p in shown]
        data = np.array([[col.get(p, np.nan) for col in cols] for p in problems], dtype=float)
        image = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=35, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(len(problems)), problems, fontsize=8)
        ax.set_xlabel("configuration and round")
        ax.set_ylabel("problem")
        ax.set_title(
            f"{dataset}: fraction of candidates correct\n"
            "flags over seeds: T truncated · U answer without box · P box not parsed · F backend failed",
            fontsize=9,
        )
        for b in bounds[:-1]:
            ax.axvline(b - 0.5, color="white", linewidth=2)
        for (i, j), v in np.ndenumerate(data):
            flag = marks[j].get(problems[i], "")
            if data.size <= 400:
                text = ("" if np.isnan(v) else f"{v:.2f}") + (f"\n{flag}" if flag else "")
                if text:
                    colour = "black" if np.isnan(v) or v >= 0.6 else "white"
                    ax.text(j, i, text, ha="center", va="center", fontsize=6, color=colour)
            elif flag:
                ax.plot(j + 0.3, i - 0.3, marker="^", color="red", markersize=3)
    if image is not None:
        fig.colorbar(image, ax=axes[:, 0].tolist(), label="fraction correct\n(mean over seeds)", shrink=0.9)
    else:
        axes[0][0].text(0.5, 0.5, "no complete units yet", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


_AXES: dict[str, tuple[str, Callable[[ParetoPoint], float | None]]] = {
    "tokens": ("decode tokens per question", lambda p: p.tokens),
    "seconds": ("machine seconds per question (this machine)", lambda p: p.seconds),
    "cost": ("cost per question", lambda p: p.cost),
}


def pareto(points: list[ParetoPoint], currency: str | None, path: Path) -> Path:
    """Rows: datasets; columns: pass@1 against decode tokens, machine seconds and cost per question.
    One marker per (configuration, round), labelled; the Pareto front as a step line. A column
    without values (no timed records, no price table) says why it is empty."""
    plt = _pyplot()
    datasets = list(dict.fromkeys(p.dataset for p in points)) or ["(no complete units)"]
    configs = list(dict.fromkeys(p.config for p in points))
    fig, axes = plt.subplots(
        len(datasets),
        len(_AXES),
        figsize=(6.0 * len(_AXES), 4.6 * len(datasets) + 0.3 * len(configs)),
        squeeze=False,
        layout="constrained",
    )
    colours = plt.get_cmap("tab10")
    for row, dataset in zip(axes, datasets, strict=True):
        mine = [p for p in points if p.dataset == dataset]
        for ax, (axis, (label, value)) in zip(row, _AXES.items(), strict=True):
            shown = [p for p in mine if value(p) is not None]
            if axis == "cost" and currency:
                label = f"{label} ({currency})"
            ax.set_xlabel(label)
            ax.set_ylabel("pass@1 (%)")
            ax.set_title(f"{dataset}: accuracy vs {axis}")
            ax.grid(alpha=0.3)
            if not shown:
                why = {"cost": "no price table (--prices)", "seconds": "no timed records"}.get(
                    axis, "no points"
                )
                ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
                continue
            for p in shown:
                colour = colours(configs.index(p.config) % 10)
                ax.plot(value(p), 100 * p.accuracy, marker="o", color=colour, linestyle="none")
                ax.annotate(
                    f"r{p.round}",
                    (value(p), 100 * p.accuracy),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
            best = front(shown, value)
            ax.step(
                [value(p) for p in best],
                [100 * p.accuracy for p in best],
                where="post",
                color="black",
                linewidth=1,
                label="Pareto front",
            )
            ax.set_ylim(-3, 103)
    handles = [
        plt.Line2D([], [], marker="o", linestyle="none", color=colours(i % 10), label=c)
        for i, c in enumerate(configs)
    ]
    handles.append(plt.Line2D([], [], color="black", label="Pareto front"))
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
