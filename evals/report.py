"""``mrsa report``: metrics per round, baselines at matched decode budgets, published rows beside
this run's numbers, and plots — written into the run folder as ``report.md``, ``metrics.json`` and
two PNGs. The report is a function of the manifest and the records only (no clock, no record
order), so a resumed sweep ends with the same report as one that ran straight through.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from pydantic import BaseModel

from evals import pareto, plots
from evals.accuracy import BOOTSTRAP_RESAMPLES, Estimate, RoundMetrics, SeedSpread, all_rounds, problem_grid
from evals.costs import SweepCosts, cost_lines, sweep_costs
from evals.flags import FlagGroup, cell_letters, flag_lines, group_flags
from evals.grading import REASONS, Grader
from evals.records import UnitKey
from evals.rundir import METRICS, REPORT, Manifest, RunDir
from evals.scoring import score
from evals.timing import Hardware, SweepTiming, hardware_of, sweep_timing, timing_lines
from mrsa.params import RSAParams
from mrsa.prices import PriceTable


class GroupMetrics(BaseModel):
    config: str
    dataset: str
    runs: int
    problems: int
    rounds: list[RoundMetrics]
    grid: dict[str, list[float]]
    reasons: dict[str, int]


class Baseline(BaseModel):
    dataset: str
    config: str
    method: str
    metric: str
    estimate: Estimate | None
    decode_tokens: float | None
    source: str


class Published(BaseModel):
    source: str
    model: str
    dataset: str
    benchmark: str
    configuration: str
    preset: str
    single: str
    rsa: str


PUBLISHED: list[Published] = [
    Published(
        source="ZAYA1-8B technical report (Zyphra)",
        model="ZAYA1-8B",
        dataset="aime2025",
        benchmark="AIME'25",
        configuration="single rollout vs Markovian RSA N=16, K=4, T=2, β=40960, τ=4096 (preset zaya1)",
        preset="zaya1",
        single="88.3",
        rsa="91.9",
    ),
    Published(
        source="ZAYA1-8B technical report (Zyphra)",
        model="ZAYA1-8B",
        dataset="hmmt_feb2025",
        benchmark="HMMT Feb'25",
        configuration="single rollout vs Markovian RSA N=16, K=4, T=2, β=40960, τ=4096 (preset zaya1)",
        preset="zaya1",
        single="82.7",
        rsa="89.6",
    ),
    Published(
        source="RSA paper (Venkatraman et al., 2025)",
        model="Qwen3-4B-Instruct-2507",
        dataset="aime2025",
        benchmark="AIME-25",
        configuration="round 0 vs full-chain RSA N=16, K=4, 10 loops (T=9), τ=β=8192 (preset rsa-paper)",
        preset="rsa-paper",
        single="≈47",
        rsa="≈73",
    ),
]


class ReportData(BaseModel):
    manifest: Manifest
    groups: list[GroupMetrics]
    baselines: list[Baseline]
    complete: int
    total: int
    incomplete: list[UnitKey]
    records: int
    costs: SweepCosts
    flags: list[FlagGroup]
    timing: SweepTiming
    pareto: list[pareto.ParetoPoint]


def compute(
    run: RunDir, grader: Grader | None, prices: PriceTable | None = None, hardware: Hardware | None = None
) -> ReportData:
    """Metrics of every (configuration, dataset) from the run folder (complete units only), the
    sweep's tokens and cost (every record), flags (every record), and time and throughput
    (``hardware``: as ``mrsa report --gpus`` states it, else as the sessions recorded it)."""
    manifest = run.load_manifest()
    records = run.records.load()
    scored = score(manifest, records, grader)
    incomplete = set(scored.incomplete)
    failures = run.failures.load()
    units: dict[tuple[str, str], list[UnitKey]] = defaultdict(list)
    for unit in manifest.units():
        units[(unit.config, unit.dataset)].append(unit)
    flags = []
    for (config_id, dataset), members in units.items():
        params = manifest.config(config_id).params
        populations = [params.stage_population(r) for r in range(params.stages)]
        flags.append(
            FlagGroup(
                config=config_id,
                dataset=dataset,
                **group_flags(members, records.values(), populations, failures).model_dump(),
            )
        )
    reasons: dict[tuple[str, str], Counter[str]] = {}
    for rec in records.values():
        if rec.unit not in incomplete:
            reasons.setdefault((rec.config, rec.dataset), Counter())[rec.reason] += 1
    groups = []
    for config in manifest.configs:
        for ds in manifest.datasets:
            runs = scored.groups[config.id][ds.name]
            if not runs:
                continue
            counts = reasons.get((config.id, ds.name), Counter())
            groups.append(
                GroupMetrics(
                    config=config.id,
                    dataset=ds.name,
                    runs=len(runs),
                    problems=len({r.problem for r in runs}),
                    rounds=all_rounds(runs),
                    grid=problem_grid(runs),
                    reasons={reason: counts.get(reason, 0) for reason in REASONS},
                )
            )
    complete = {key: [u for u in members if u not in incomplete] for key, members in units.items()}
    timing = sweep_timing(manifest, list(records.values()), complete, hardware_of(manifest, hardware), prices)
    return ReportData(
        manifest=manifest,
        groups=groups,
        baselines=baselines(manifest, groups),
        complete=scored.complete,
        total=len(manifest.units()),
        incomplete=scored.incomplete,
        records=scored.records,
        costs=sweep_costs(records.values(), manifest.model, prices),
        flags=flags,
        timing=timing,
        pareto=pareto.points([(g.config, g.dataset, g.rounds) for g in groups], timing.groups),
    )


def _same_sampling(a: RSAParams, b: RSAParams) -> bool:
    return a.sampling == b.sampling and a.prompts == b.prompts


def _alternatives(
    manifest: Manifest, g: GroupMetrics, by_key: dict[tuple[str, str], GroupMetrics]
) -> tuple[tuple[str, RoundMetrics] | None, tuple[str, RoundMetrics] | None]:
    """T=0 configurations of the sweep that match ``g``'s budget: one long rollout (β×(T+1)) and
    self-consistency over N×(T+1) candidates of budget β."""
    p = manifest.config(g.config).params
    long_src: tuple[str, RoundMetrics] | None = None
    sc_src: tuple[str, RoundMetrics] | None = None
    for other in manifest.configs:
        q = other.params
        found = by_key.get((other.id, g.dataset))
        if found is None or q.rounds != 0 or not _same_sampling(p, q):
            continue
        if q.budget == p.budget * p.stages and long_src is None:
            long_src = (other.id, found.rounds[0])
        if q.budget == p.budget and q.population == p.population * p.stages and sc_src is None:
            sc_src = (other.id, found.rounds[0])
    return long_src, sc_src


def baselines(manifest: Manifest, groups: list[GroupMetrics]) -> list[Baseline]:
    """For each configuration with aggregation rounds, its final round beside cheaper or matched
    alternatives found in the same sweep."""
    by_key = {(g.config, g.dataset): g for g in groups}
    out: list[Baseline] = []
    for g in groups:
        p = manifest.config(g.config).params
        if p.rounds == 0:
            continue
        first, last = g.rounds[0], g.rounds[-1]
        n, stages = p.population, p.stages
        rows: list[tuple[str, str, Estimate | None, float | None, str]] = [
            (f"Markovian RSA, round {last.round}", "pass@1", last.pass1, last.decode_tokens, g.config),
            (
                f"Markovian RSA, round {last.round}",
                f"maj@{p.stage_population(p.rounds)}",
                last.maj,
                last.decode_tokens,
                g.config,
            ),
            ("single rollout (round 0)", "pass@1", first.pass1, first.decode_tokens / n, g.config),
            (
                f"self-consistency over the {n} round-0 candidates",
                f"maj@{n}",
                first.maj,
                first.decode_tokens,
                g.config,
            ),
        ]
        long_src, sc_src = _alternatives(manifest, g, by_key)
        long_name = f"one long rollout, budget {p.budget * stages} (β×{stages})"
        if long_src is not None:
            cid, m = long_src
            per_rollout = m.decode_tokens / manifest.config(cid).params.population
            rows.append((long_name, "pass@1", m.pass1, per_rollout, cid))
        else:
            rows.append((long_name, "pass@1", None, None, "not in sweep"))
        sc_name = f"self-consistency over {n * stages} samples (matched total)"
        if sc_src is not None:
            cid, m = sc_src
            rows.append((sc_name, f"maj@{n * stages}", m.maj, m.decode_tokens, cid))
        else:
            rows.append((sc_name, f"maj@{n * stages}", None, None, "not in sweep"))
        out += [
            Baseline(
                dataset=g.dataset,
                config=g.config,
                method=method,
                metric=metric,
                estimate=est,
                decode_tokens=tokens,
                source=source,
            )
            for method, metric, est, tokens, source in rows
        ]
    return out


def _pct(e: Estimate | None, ci: bool = True) -> str:
    if e is None:
        return "—"
    if not ci:
        return f"{100 * e.value:.1f}"
    return f"{100 * e.value:.1f} [{100 * e.low:.1f}, {100 * e.high:.1f}]"


def _tok(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def _params_row(cid: str, p: RSAParams) -> str:
    s = p.sampling
    chunk = "off" if p.chunk is None else f"{p.chunk} (carry {p.carryover_tokens})"
    return (
        f"| `{cid}` | {p.population} | {p.subset} | {p.rounds} | {p.budget} | {p.tail} | {chunk} | "
        f"{p.tail_source} | {s.temperature:g} | {s.top_p:g} | {s.top_k} | {p.prompts} |"
    )


def _spread(s: SeedSpread) -> str:
    """``mean [t interval] · mean ± std``, in %."""
    interval = "" if s.low is None or s.high is None else f" [{100 * s.low:.1f}, {100 * s.high:.1f}]"
    return f"{100 * s.mean:.1f}{interval} · {100 * s.mean:.1f} ± {100 * s.std:.1f}"


def seed_lines(data: ReportData) -> list[str]:
    """avg@k: the mean over seeds (whole RSA runs) with its interval, and the per-seed spread."""
    lines = [
        "",
        "## avg@k over seeds",
        "",
        "Each seed is a whole, independent RSA run over the problems. avg@k is the mean of the k seeds' "
        "accuracies with a 95% Student-t interval over seeds (none with one seed), then the per-seed "
        "spread as mean ± sample standard deviation; the bootstrap over problems (from the table above) "
        "is beside it. In %.",
        "",
        "| configuration | dataset | round | k | pass@1 avg@k [95% CI] · mean ± std | per seed | "
        "maj@N avg@k [95% CI] · mean ± std | pass@1, bootstrap over problems |",
        "|---|---|---:|---:|---|---|---|---|",
    ]
    for g in data.groups:
        for r in g.rounds:
            per_seed = ", ".join(f"{seed}: {100 * v:.1f}" for seed, v in r.pass1_seeds.per_seed.items())
            lines.append(
                f"| `{g.config}` | {g.dataset} | {r.round} | {r.pass1_seeds.seeds} | {_spread(r.pass1_seeds)} | "
                f"{per_seed} | {_spread(r.maj_seeds)} | {_pct(r.pass1)} |"
            )
    return lines


def island_lines(data: ReportData) -> list[str]:
    """The per-island table, for configurations with islands (none: no section)."""
    rows = [
        f"| `{g.config}` | {g.dataset} | {r.round} | {len(r.islands)} | "
        + " · ".join(f"{100 * i.pass1:.1f}" for i in r.islands)
        + " | "
        + " · ".join(f"{100 * i.maj:.1f}" for i in r.islands)
        + " |"
        for g in data.groups
        for r in g.rounds
        if r.islands
    ]
    if not rows:
        return []
    return [
        "",
        "## Islands",
        "",
        "Rounds that are split into islands (`islands` M > 1; islands merge in pairs until one is left). "
        "Per island, in index order: pass@1 and the accuracy of the island's own majority answer, in %, "
        "averaged like the round's (no intervals: islands are small).",
        "",
        "| configuration | dataset | round | islands | pass@1 per island | maj per island |",
        "|---|---|---:|---:|---|---|",
        *rows,
    ]


def render_markdown(data: ReportData) -> str:
    m = data.manifest
    backends = list(dict.fromkeys((s.backend.kind, s.backend.url, s.backend.version) for s in m.sessions))
    revisions = list(
        dict.fromkeys(f"{s.mrsa_version} (git {s.git_revision or 'unknown'})" for s in m.sessions)
    )
    lines = [
        "# mrsa benchmark report",
        "",
        f"- **Model:** `{m.model or 'unknown'}`",
        "- **Backend:** "
        + "; ".join(f"{kind} at {url}" + (f" (server {ver})" if ver else "") for kind, url, ver in backends),
        f"- **mrsa:** {', '.join(revisions) or 'unknown'}",
        "- **Datasets:** "
        + ", ".join(f"`{d.name}` ({len(d.problems)} problems, sha256 {d.sha256[:12]})" for d in m.datasets),
        f"- **Seeds:** {', '.join(str(s) for s in m.seeds)}",
        f"- **Units complete:** {data.complete} of {data.total} (configuration × problem × seed); "
        f"{data.records} candidate records",
    ]
    if data.incomplete:
        lines.append(
            f"- **Incomplete units:** {len(data.incomplete)} (not in the numbers below; rerun `mrsa bench` "
            "with the same folder to finish them)"
        )
    lines += [
        "",
        "## Configurations",
        "",
        "| id | N | K | T | β | τ | chunk | tail source | temperature | top_p | top_k | prompts |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|",
        *(_params_row(c.id, c.params) for c in m.configs),
        "",
        "## Results by round",
        "",
        "Accuracies in %, with 95% bootstrap intervals over problems. Tokens are means per problem run "
        "(one problem, one seed), cumulative up to the round.",
    ]
    for ds in m.datasets:
        groups = [g for g in data.groups if g.dataset == ds.name]
        if not groups:
            continue
        lines += [
            "",
            f"### {ds.name}",
            "",
            "| configuration | round | pass@1 | maj@N | pass@N | unbiased pass@k | decode tokens | prompt tokens | truncated | no answer |",
            "|---|---:|---|---|---|---|---:|---:|---:|---:|",
        ]
        for g in groups:
            for r in g.rounds:
                pk = ", ".join(f"k={k}: {100 * v:.1f}" for k, v in r.pass_at_k.items())
                lines.append(
                    f"| `{g.config}` | {r.round} | {_pct(r.pass1)} | {_pct(r.maj)} | {_pct(r.pass_n)} | {pk} | "
                    f"{_tok(r.decode_tokens)} | {_tok(r.prompt_tokens)} | {100 * r.truncation_rate:.1f}% | "
                    f"{100 * r.no_answer_rate:.1f}% |"
                )
    lines += seed_lines(data)
    lines += island_lines(data)
    lines += flag_lines(data.flags)
    lines += ["", "## Baselines at matched decode budgets", ""]
    if data.baselines:
        lines += [
            "From the same sweep. Decode tokens are per problem run: for a single rollout, one candidate's;"
            " otherwise the whole population's, cumulative.",
            "",
            "| dataset | configuration | method | metric | accuracy % | decode tokens | from |",
            "|---|---|---|---|---|---:|---|",
        ]
        for b in data.baselines:
            source = b.source if b.source == "not in sweep" else f"`{b.source}`"
            lines.append(
                f"| {b.dataset} | `{b.config}` | {b.method} | {b.metric} | {_pct(b.estimate)} | "
                f"{_tok(b.decode_tokens)} | {source} |"
            )
        lines += [
            "",
            "A long rollout is found when the sweep holds a configuration with T=0 and budget β×(T+1) and "
            "the same sampling; matched self-consistency needs T=0, the same β and N×(T+1) candidates "
            "(add them with `--grid`, e.g. `rounds=0;population=…` or `rounds=0;budget=…`).",
        ]
    else:
        lines.append("No configuration with aggregation rounds (T ≥ 1) has complete results.")
    lines += [
        "",
        "## Published results beside this run",
        "",
        "Published numbers are pass@1 in % (single rollout, and the final population after aggregation). "
        "This run's numbers are round-0 and final-round pass@1 of each configuration on the same set; "
        "they are comparable only with the same model and configuration.",
        "",
        "| source | model | benchmark | configuration | single | RSA | this run (configuration, model): round 0 → final |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for pub in PUBLISHED:
        mine = [g for g in data.groups if g.dataset == pub.dataset and len(g.rounds) > 1]
        if mine:
            cells = "; ".join(
                f"`{g.config}`{' (same preset)' if m.config(g.config).preset == pub.preset else ''}, "
                f"`{m.model}`: {_pct(g.rounds[0].pass1, ci=False)} → {_pct(g.rounds[-1].pass1, ci=False)}"
                for g in mine
            )
        else:
            cells = f"not in this run (run `--dataset {pub.dataset} --preset {pub.preset}`)"
        lines.append(
            f"| {pub.source} | {pub.model} | {pub.benchmark} | {pub.configuration} | {pub.single} | {pub.rsa} | {cells} |"
        )
    lines += cost_lines(data.costs)
    lines += timing_lines(data.timing)
    lines += [
        "",
        "## Plots",
        "",
        f"![Accuracy against cumulative decode tokens, by round]({plots.ACCURACY_PNG})",
        "",
        f"![Fraction of candidates correct, per problem and round]({plots.GRID_PNG})",
        "",
        f"![Accuracy against tokens, time and cost per question, with the Pareto front]({plots.PARETO_PNG})",
        "",
        "The grid's letters count flags over a problem's seeds: T truncated, U answer without box, P box "
        "not parsed, F backend failed. The Pareto plot has one point per configuration and round "
        "(pass@1 against decode tokens, machine seconds and cost per question); the line joins the "
        "points no other point beats on both axes.",
        "",
        "## Grading",
        "",
        "Every candidate is graded on its last `\\boxed{}` with math-verify (gold first), in a process pool "
        f"with a per-answer time limit of {m.grading.get('timeout_s', '?')} s.",
        "",
        "| configuration | dataset | " + " | ".join(REASONS) + " |",
        "|---|---|" + "---:|" * len(REASONS),
    ]
    for g in data.groups:
        lines.append(
            f"| `{g.config}` | {g.dataset} | " + " | ".join(str(g.reasons[r]) for r in REASONS) + " |"
        )
    lines += [
        "",
        "## Method",
        "",
        "- **pass@1**: mean correctness over the N candidates of a round (the population), averaged over "
        "seeds per problem, then over problems.",
        "- **maj@N**: the answer `--selection majority` returns (math-verify equivalence classes; finished "
        "candidates preferred; ties to the class seen first) is correct.",
        "- **pass@N**: some candidate of the round is correct. **Unbiased pass@k**: 1 − C(N−c, k)/C(N, k) "
        "per run (Chen et al., 2021), averaged like pass@1.",
        "- **Tokens**: decode (generated) and prompt tokens as the server reports them, summed over the "
        "population and all rounds up to this one, averaged over runs.",
        "- **truncated**: candidates stopped by the budget β (finish reason `length`); **no answer**: "
        "candidates without `\\boxed{}` (graded wrong).",
        f"- **95% intervals**: percentile bootstrap over problems ({BOOTSTRAP_RESAMPLES} resamples, fixed "
        "seed): problems are the independent unit; candidates and seeds of one problem are not. With few "
        "problems the intervals are wide and coarse.",
        "- **avg@k**: seeds are independent whole runs; the mean of the per-seed accuracies with a "
        "Student-t interval over the k seeds, and mean ± sample std (the spread a rerun would show).",
        "",
    ]
    return "\n".join(lines)


def write_report(
    run: RunDir, grader: Grader | None, prices: PriceTable | None = None, hardware: Hardware | None = None
) -> tuple[ReportData, list[Path]]:
    """Compute and write ``report.md``, ``metrics.json`` and the three plots; return the paths."""
    data = compute(run, grader, prices, hardware)
    series: dict[str, dict[str, list[RoundMetrics]]] = {}
    grids: dict[str, dict[str, dict[str, list[float]]]] = {}
    letters: dict[str, dict[str, dict[str, list[str]]]] = {}
    for g in data.groups:
        series.setdefault(g.config, {})[g.dataset] = g.rounds
        grids.setdefault(g.config, {})[g.dataset] = g.grid
    for f in data.flags:
        stages = len(f.rounds)
        letters.setdefault(f.config, {})[f.dataset] = {
            problem: [cell_letters(runs, r) for r in range(stages)] for problem, runs in f.problems.items()
        }
    paths = [
        run.path / REPORT,
        run.path / METRICS,
        plots.accuracy_vs_tokens(series, run.path / plots.ACCURACY_PNG),
        plots.problem_grid(grids, run.path / plots.GRID_PNG, letters),
        plots.pareto(data.pareto, data.timing.currency, run.path / plots.PARETO_PNG),
    ]
    (run.path / REPORT).write_text(render_markdown(data), encoding="utf-8")
    (run.path / METRICS).write_text(
        data.model_dump_json(indent=2, exclude={"manifest"}) + "\n", encoding="utf-8"
    )
    return data, paths
