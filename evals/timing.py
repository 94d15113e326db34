"""Time, throughput and cost of a sweep, from the wall-clock times in the records.

A sweep runs many jobs side by side on one server, so a configuration's share of the machine is
not its jobs' wall-clock time (they overlap). Each candidate records when its generation started
and finished: its *busy* seconds, the time its requests were in flight (running on the server or
queued there). The sweep's wall time
(its sessions, from the backend being ready to the last record) is shared out in proportion to busy
seconds: a question's *machine seconds* are its candidates' busy seconds × wall / (all busy
seconds). That gives questions per hour and, with the hardware the user states, GPU-hours per
question, for each configuration and round, even when configurations ran interleaved.

Latency is measured directly: from the moment a session created the job to the last candidate of
each round, for runs generated within one session (a resumed run's earlier candidates were timed
against another start).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, Field

from evals.records import CandidateRecord, UnitKey
from evals.rundir import Manifest, Session
from mrsa.domain import Usage
from mrsa.prices import PriceTable


class Hardware(BaseModel):
    gpus: int | None = None
    gpu_name: str | None = None

    @property
    def stated(self) -> bool:
        return self.gpus is not None


class RoundTiming(BaseModel):
    round: int
    runs: int = Field(description="Complete runs of the group.")
    timed_runs: int = Field(description="Of those, runs generated within one session (latency).")
    latency_s: float | None = Field(
        None, description="Mean wall-clock seconds from job start to this round's last candidate."
    )
    round_s: float | None = Field(None, description="Mean seconds this round added to the latency.")
    machine_s: float | None = Field(
        None, description="Sweep wall time attributed to one question, cumulative up to this round."
    )
    questions_per_hour: float | None = None
    gpu_hours_per_question: float | None = None
    cost_per_question: float | None = Field(None, description="Tokens up to this round, priced (--prices).")


class GroupTiming(BaseModel):
    config: str
    dataset: str
    rounds: list[RoundTiming]


class SweepTiming(BaseModel):
    wall_s: float | None = Field(None, description="Sum of the sessions' wall-clock spans.")
    sessions: int
    timed_records: int = Field(description="Records with start and finish times.")
    decode_tokens: int = Field(description="Decode tokens of the timed records.")
    decode_tokens_per_s: float | None = Field(None, description="Achieved: decode tokens / wall time.")
    busy_s: float = Field(description="Sum of the timed candidates' generation seconds.")
    mean_in_flight: float | None = Field(None, description="busy seconds / wall: candidates in flight.")
    hardware: Hardware
    currency: str | None = None
    groups: list[GroupTiming] = Field(default_factory=list)


def session_spans(sessions: Sequence[Session], records: Sequence[CandidateRecord]) -> list[float]:
    """Each session's wall-clock span: to its recorded end, or (killed, no end) to its last record
    before the next session started; a session with neither counts 0."""
    starts = sorted(s.started_at for s in sessions)
    spans = []
    for s in sessions:
        later = [t for t in starts if t > s.started_at]
        limit = min(later) if later else math.inf
        end = s.finished_at
        if end is None:
            inside = [r.finished_at for r in records if r.finished_at is not None]
            inside = [t for t in inside if s.started_at <= t < limit]
            end = max(inside) if inside else s.started_at
        spans.append(max(0.0, end - s.started_at))
    return spans


def hardware_of(manifest: Manifest, override: Hardware | None) -> Hardware:
    """The hardware the user stated: ``override`` (``mrsa report --gpus``), else what every session
    of the sweep stated (``mrsa bench --gpus``); unknown when sessions disagree or none said."""
    if override is not None and override.stated:
        return override
    stated = {(s.gpus, s.gpu_name) for s in manifest.sessions}
    if len(stated) == 1:
        gpus, name = stated.pop()
        return Hardware(gpus=gpus, gpu_name=name)
    return Hardware()


def _usage(records: Iterable[CandidateRecord]) -> Usage:
    return sum(
        (
            Usage(
                decode_tokens=r.decode_tokens,
                prompt_tokens=r.prompt_tokens,
                cached_prompt_tokens=r.cached_prompt_tokens,
                requests=r.requests,
            )
            for r in records
        ),
        Usage(),
    )


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def round_timing(
    runs: Sequence[Sequence[CandidateRecord]],
    round_index: int,
    factor: float | None,
    hardware: Hardware,
    prices: PriceTable | None,
    model: str | None,
) -> RoundTiming:
    """Timing of round ``round_index`` over complete ``runs`` (each: all its records); ``factor``
    converts busy seconds to machine seconds (wall / all busy seconds; ``None``: untimed)."""
    r = round_index
    upto = [[rec for rec in run if rec.round <= r] for run in runs]
    one_session = [
        run
        for run in upto
        if run
        and all(rec.finished_at is not None for rec in run)
        and len({rec.job_started_at for rec in run}) == 1
        and run[0].job_started_at is not None
    ]

    def latency(run: Sequence[CandidateRecord], last: int) -> float:
        ends = [rec.finished_at for rec in run if rec.round <= last and rec.finished_at is not None]
        start = run[0].job_started_at
        assert start is not None
        return max(ends) - start if ends else 0.0

    latencies = [latency(run, r) for run in one_session]
    increments = [latency(run, r) - (latency(run, r - 1) if r > 0 else 0.0) for run in one_session]
    machine: list[float] = []
    if factor is not None:
        for run in upto:
            busy = [rec.busy_s for rec in run]
            if run and all(b is not None for b in busy):
                machine.append(factor * math.fsum(b for b in busy if b is not None))
    machine_s = _mean(machine)
    costs = [prices.cost(_usage(run), model) for run in upto] if prices is not None else []
    priced = [c.total for c in costs if c is not None]
    return RoundTiming(
        round=r,
        runs=len(runs),
        timed_runs=len(one_session),
        latency_s=_mean(latencies),
        round_s=_mean(increments),
        machine_s=machine_s,
        questions_per_hour=3600 / machine_s if machine_s else None,
        gpu_hours_per_question=hardware.gpus * machine_s / 3600
        if machine_s is not None and hardware.gpus is not None
        else None,
        cost_per_question=_mean(priced) if priced and len(priced) == len(upto) else None,
    )


def sweep_timing(
    manifest: Manifest,
    records: Sequence[CandidateRecord],
    complete: dict[tuple[str, str], list[UnitKey]],
    hardware: Hardware,
    prices: PriceTable | None,
) -> SweepTiming:
    """Time, throughput and cost per (configuration, dataset) and round; ``complete``: the complete
    units of each (configuration id, dataset)."""
    timed = [r for r in records if r.busy_s is not None]
    spans = session_spans(manifest.sessions, records)
    wall = math.fsum(spans) if manifest.sessions else None
    busy = math.fsum(r.busy_s for r in timed if r.busy_s is not None)
    decode = sum(r.decode_tokens for r in timed)
    factor = wall / busy if wall and busy > 0 else None
    by_unit: dict[UnitKey, list[CandidateRecord]] = defaultdict(list)
    for rec in records:
        by_unit[rec.unit].append(rec)
    groups = []
    for (config, dataset), units in complete.items():
        if not units:
            continue
        stages = manifest.config(config).params.stages
        runs = [by_unit[u] for u in units]
        groups.append(
            GroupTiming(
                config=config,
                dataset=dataset,
                rounds=[
                    round_timing(runs, r, factor, hardware, prices, manifest.model) for r in range(stages)
                ],
            )
        )
    return SweepTiming(
        wall_s=wall,
        sessions=len(manifest.sessions),
        timed_records=len(timed),
        decode_tokens=decode,
        decode_tokens_per_s=decode / wall if wall else None,
        busy_s=busy,
        mean_in_flight=busy / wall if wall else None,
        hardware=hardware,
        currency=prices.currency if prices is not None else None,
        groups=groups,
    )


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def timing_lines(t: SweepTiming) -> list[str]:
    """The report's time, throughput and cost section."""
    hw = t.hardware
    stated = (
        f"{hw.gpus} × {hw.gpu_name or 'GPU (kind not stated)'}"
        if hw.stated
        else "not stated (`--gpus N --gpu-name NAME` on `mrsa bench` or `mrsa report`): no GPU-hours"
    )
    lines = [
        "",
        "## Time, throughput and cost",
        "",
        f"- **Wall time:** {_num(t.wall_s, ',.1f')} s over {t.sessions} session(s) "
        f"({t.timed_records} timed candidates, {t.decode_tokens:,} decode tokens)",
        f"- **Decode throughput achieved:** {_num(t.decode_tokens_per_s, ',.1f')} tokens/s; "
        f"{_num(t.mean_in_flight, '.1f')} candidates in flight on average",
        f"- **Hardware:** {stated}",
        "",
        "Per problem run (one problem, one seed), cumulative up to the round. **latency**: wall-clock "
        "seconds from the job's start to the round's last candidate (runs generated in one session); "
        "**round**: what the round added. **machine s/question**: the sweep's wall time shared out in "
        "proportion to the seconds each candidate's requests were in flight; **questions/hour** = 3600 / that; "
        "**GPU-h/question** = GPUs × machine seconds / 3600; **cost/question**: its tokens priced with "
        "`--prices`.",
        "",
        "| configuration | dataset | round | runs (timed) | latency s | round s | machine s/question "
        "| questions/hour | GPU-h/question | cost/question |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    currency = f" {t.currency}" if t.currency else ""
    for g in t.groups:
        for r in g.rounds:
            cost = "—" if r.cost_per_question is None else f"{r.cost_per_question:.6f}{currency}"
            lines.append(
                f"| `{g.config}` | {g.dataset} | {r.round} | {r.runs} ({r.timed_runs}) | "
                f"{_num(r.latency_s, ',.2f')} | {_num(r.round_s, ',.2f')} | {_num(r.machine_s, ',.3f')} | "
                f"{_num(r.questions_per_hour, ',.1f')} | {_num(r.gpu_hours_per_question, '.6f')} | {cost} |"
            )
    lines += [
        "",
        "**Which numbers depend on the machine.** Wall time, latency, round seconds, decode tokens/s, "
        "machine seconds, questions per hour and GPU-hours per question measure *this* server under "
        "*this* sweep's load (its batch size, the other jobs in flight, anything else on the machine): "
        "they compare configurations within one sweep, not across machines. Accuracy, tokens and the "
        "token-priced cost per question depend only on the model and the configuration.",
    ]
    return lines
