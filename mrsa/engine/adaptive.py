"""Adaptive compute: whether a job stops after a round instead of running all T aggregation rounds.

Two opt-in rules, checked when a round is complete (:meth:`mrsa.engine.runner.TaskRunner`), before
the next round is planned:

- **converged** (``stop_agreement`` q): after a round t ≥ ``stop_min_round``, at least a share q of
  the round's finished candidates are behind one answer, and at most ``stop_max_truncated`` of its
  candidates were cut at the budget (a population that mostly ran out of tokens has not converged,
  however its few finished candidates agree).
- **token budget** (``token_budget``): the decode tokens spent so far plus the last round's decode
  tokens (the projection of one more round) would exceed the budget.

The decision is a pure function of the rounds' summaries, so a redelivered completion decides the
same way. The tokens an early stop saves are an estimate (rounds skipped × the last round's decode
tokens), labelled so in the result.
"""

from __future__ import annotations

from collections.abc import Sequence

from mrsa.domain import EarlyStop, RoundSummary, StopReason
from mrsa.params import RSAParams


def agreement(summary: RoundSummary) -> float:
    """Share of the round's finished candidates behind its most-voted answer (0 when none finished)."""
    finished = sum(1 for c in summary.candidates if c.finish_reason == "stop")
    if not finished:
        return 0.0
    return max((v.finished for v in summary.votes), default=0) / finished


def truncated_share(summary: RoundSummary) -> float:
    return summary.truncated / len(summary.candidates) if summary.candidates else 0.0


def converged(params: RSAParams, summary: RoundSummary) -> bool:
    """Rule *converged* for the round ``summary`` (off when ``stop_agreement`` is unset)."""
    return (
        params.stop_agreement is not None
        and summary.index >= params.stop_min_round
        and agreement(summary) >= params.stop_agreement
        and truncated_share(summary) <= params.stop_max_truncated
    )


def over_budget(params: RSAParams, rounds: Sequence[RoundSummary]) -> bool:
    """Rule *token budget*: one more round like the last would spend more than ``token_budget``."""
    if params.token_budget is None or not rounds:
        return False
    spent = sum(r.usage.decode_tokens for r in rounds)
    return spent + rounds[-1].usage.decode_tokens > params.token_budget


def decide(params: RSAParams, rounds: Sequence[RoundSummary]) -> EarlyStop | None:
    """Whether the job stops after the last of ``rounds`` (complete rounds 0..t, in order); ``None``
    to go on. Never stops after round T: that is the ordinary end."""
    if not params.adaptive or not rounds or rounds[-1].index >= params.rounds:
        return None
    last = rounds[-1]
    reason: StopReason
    if converged(params, last):
        reason = "converged"
    elif over_budget(params, rounds):
        reason = "token_budget"
    else:
        return None
    skipped = params.rounds - last.index
    return EarlyStop(
        reason=reason,
        after_round=last.index,
        rounds_skipped=skipped,
        agreement=round(agreement(last), 4),
        truncated_share=round(truncated_share(last), 4),
        decode_tokens_saved_estimate=skipped * last.usage.decode_tokens,
    )
