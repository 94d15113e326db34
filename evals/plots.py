"""The report's PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evals.metrics import RoundMetrics

ACCURACY_PNG = "accuracy_vs_tokens.png"
GRID_PNG = "problem_grid.png"


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


def problem_grid(grids: dict[str, dict[str, dict[str, list[float]]]], path: Path) -> Path:
    """Per dataset, a heat map: one row per problem, one column per (configuration, round), colour
    = fraction of that round's candidates that are correct (mean over seeds)."""
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
        for config, by_ds in grids.items():
            grid = by_ds.get(dataset) or {}
            if not grid:
                continue
            rounds = min(len(v) for v in grid.values())
            for r in range(rounds):
                labels.append(f"{config} · r{r}")
                cols.append({p: v[r] for p, v in grid.items()})
            bounds.append(len(labels))
        problems = list(dict.fromkeys(p for col in cols for p in col))
        data = np.array([[col.get(p, np.nan) for col in cols] for p in problems], dtype=float)
        image = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=35, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(len(problems)), problems, fontsize=8)
        ax.set_xlabel("configuration and round")
        ax.set_ylabel("problem")
        ax.set_title(f"{dataset}: fraction of candidates correct")
        for b in bounds[:-1]:
            ax.axvline(b - 0.5, color="white", linewidth=2)
        if data.size <= 400:
            for (i, j), v in np.ndenumerate(data):
                if not np.isnan(v):
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v < 0.6 else "black",
                    )
    if image is not None:
        fig.colorbar(image, ax=axes[:, 0].tolist(), label="fraction correct\n(mean over seeds)", shrink=0.9)
    else:
        axes[0][0].text(0.5, 0.5, "no complete units yet", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
