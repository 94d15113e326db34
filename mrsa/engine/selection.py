"""Votes and majority selection over a population of candidates."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mrsa.domain import Candidate, Vote
from mrsa.engine.equivalence import Clustering, Equivalence, cluster

# Classes of equivalent answers: indices into the answers, first-seen order.
Classes = Callable[[Sequence[str]], list[list[int]]]


def _votes(voters: Sequence[Candidate], groups: list[list[int]]) -> list[Vote]:
    votes = []
    for order, group in enumerate(groups):
        members = [voters[i] for i in group]
        votes.append(
            (
                Vote(
                    answer=members[0].answer or "",
                    count=len(members),
                    finished=sum(1 for m in members if m.finished),
                ),
                order,
            )
        )
    votes.sort(key=lambda vo: (-vo[0].count, -vo[0].finished, vo[1]))
    return [v for v, _ in votes]


def _voters(candidates: Sequence[Candidate]) -> tuple[list[Candidate], list[str]]:
    voters = [c for c in candidates if c.answer is not None]
    return voters, [c.answer for c in voters if c.answer is not None]


def tally(candidates: Sequence[Candidate], classes: Classes = cluster) -> list[Vote]:
    """Votes per equivalence class of answers, most votes first (finished votes break ties, then
    first appearance). Candidates without an answer do not vote.

    ``classes`` groups the answers; the default clusters in this process without a time limit,
    for callers already under one. The engine uses :func:`tally_bounded`."""
    voters, answers = _voters(candidates)
    return _votes(voters, classes(answers))


async def tally_bounded(
    candidates: Sequence[Candidate], equivalence: Equivalence
) -> tuple[list[Vote], Clustering]:
    """:func:`tally` with the clustering run by ``equivalence`` (off the event loop, under its
    limit), and what it could not compare symbolically."""
    voters, answers = _voters(candidates)
    clustering = await equivalence.acluster(answers)
    return _votes(voters, clustering.groups), clustering


def votes_among(
    candidates: Sequence[Candidate], groups: Sequence[Sequence[int]], members: range
) -> list[Vote]:
    """The votes of the candidates whose index is in ``members``, from ``groups`` (the classes
    :func:`tally_bounded` found for all of ``candidates``): a part of the population is tallied with
    the whole population's equivalence classes, at no further comparison."""
    voters, _ = _voters(candidates)
    kept = [[i for i in group if voters[i].index in members] for group in groups]
    return _votes(voters, [group for group in kept if group])


def majority(votes: Sequence[Vote]) -> str | None:
    """The majority answer, preferring finished candidates: when any finished candidate answered,
    only finished votes count; otherwise all votes do."""
    if not votes:
        return None
    if any(v.finished for v in votes):
        return max(votes, key=lambda v: v.finished).answer  # max keeps the first of equals
    return votes[0].answer
