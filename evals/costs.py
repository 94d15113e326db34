"""Tokens and money of a sweep: per job (configuration × dataset × problem × seed), per
configuration and dataset, and in all, from the candidate records and an optional price table.

Every record counts, finished unit or not: the tokens were spent either way."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, Field

from evals.records import CandidateRecord
from mrsa.domain import Cost, Usage
from mrsa.prices import PriceTable


class JobCost(BaseModel):
    config: str
    dataset: str
    problem: str
    seed: int
    usage: Usage
    cost: Cost | None = None


class CostSummary(BaseModel):
    label: str = Field(description="`config / dataset`, or `sweep` for the whole run folder.")
    jobs: int
    usage: Usage
    cost: Cost | None = None


class SweepCosts(BaseModel):
    jobs: list[JobCost]
    groups: list[CostSummary]
    sweep: CostSummary
    priced: bool = Field(description="Whether a price table was given (else every cost is null).")


def _usage(record: CandidateRecord) -> Usage:
    return Usage(
        decode_tokens=record.decode_tokens,
        prompt_tokens=record.prompt_tokens,
        cached_prompt_tokens=record.cached_prompt_tokens,
        requests=record.requests,
    )


def _summary(label: str, jobs: list[JobCost], table: PriceTable | None, model: str | None) -> CostSummary:
    usage = sum((j.usage for j in jobs), Usage())
    return CostSummary(
        label=label, jobs=len(jobs), usage=usage, cost=table.cost(usage, model) if table is not None else None
    )


def sweep_costs(
    records: Iterable[CandidateRecord], model: str | None, table: PriceTable | None
) -> SweepCosts:
    """The sweep's usage and cost, job by job and summed (prices of ``model``, the sweep's model)."""
    by_job: dict[tuple[str, str, str, int], Usage] = {}
    for record in records:
        key = (record.config, record.dataset, record.problem, record.seed)
        by_job[key] = by_job.get(key, Usage()) + _usage(record)
    jobs = [
        JobCost(
            config=c,
            dataset=d,
            problem=p,
            seed=s,
            usage=usage,
            cost=table.cost(usage, model) if table is not None else None,
        )
        for (c, d, p, s), usage in sorted(by_job.items())
    ]
    groups: dict[str, list[JobCost]] = {}
    for job in jobs:
        groups.setdefault(f"{job.config} / {job.dataset}", []).append(job)
    return SweepCosts(
        jobs=jobs,
        groups=[_summary(label, members, table, model) for label, members in groups.items()],
        sweep=_summary("sweep", jobs, table, model),
        priced=table is not None,
    )


def cost_lines(costs: SweepCosts) -> list[str]:
    """The markdown section of the report."""
    lines = [
        "",
        "## Tokens and cost",
        "",
        "Every candidate record, finished unit or not. Per job in `metrics.json` (`costs.jobs`)."
        + ("" if costs.priced else " No price table was given (`mrsa report --prices FILE`): no cost."),
        "",
        "| configuration / dataset | jobs | prompt tokens | cached prompt tokens | decode tokens | cost |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in [*costs.groups, costs.sweep]:
        u = row.usage
        cost = f"{row.cost.total:.4f} {row.cost.currency}" if row.cost is not None else "—"
        label = f"**{row.label}**" if row is costs.sweep else f"`{row.label}`"
        lines.append(
            f"| {label} | {row.jobs} | {u.prompt_tokens} | {u.cached_prompt_tokens} | {u.decode_tokens} | {cost} |"
        )
    return lines
