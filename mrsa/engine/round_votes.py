"""A round's votes, clustered once per round state and stored with the round.

Clustering answers is the costly part of a round's summary: math-verify in a process pool, up to
:data:`~mrsa.engine.equivalence.ROUND_LIMITS` equivalence limits for a round holding a hostile
answer. So it runs where candidates are saved: the worker that stores a candidate clusters its
round's answers stored so far and stores the classes (:class:`~mrsa.domain.RoundVotes`) before it
announces the candidate. A round's stored candidates only grow, so the number clustered names the
state: a write covering fewer candidates than the stored one is dropped, whatever order several
workers' writes land in. The round view and the job's result read the stored classes and never
cluster: one key's hostile answers cost its own jobs' workers time, never another key's reads.

Within a worker process the clusterings of one round are coalesced (:class:`VoteKeeper`): while one
runs, the candidates saved meanwhile wait for a single next run that covers them all, so a round
whose N candidates arrive together is clustered about twice, not N times. A round's candidates
arriving one by one are clustered once each; the keeper remembers the answers it has read, so each
run reads only the candidates stored since its last (a stored candidate never changes), and
:class:`~mrsa.engine.equivalence.Equivalence` remembers its verdicts, so a run whose answers were
all compared before calls no math-verify.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mrsa import telemetry
from mrsa.domain import Candidate, Event, RoundVotes
from mrsa.engine.equivalence import Equivalence
from mrsa.store.base import JobStore


async def cluster_round(
    round_index: int, answers: Mapping[int, str | None], equivalence: Equivalence
) -> RoundVotes:
    """The classes of equivalent answers of one round's candidates (``answers``: index → answer),
    as candidate indices; candidates without an answer are in no class."""
    voters = [(i, answers[i]) for i in sorted(answers)]
    voted = [(i, a) for i, a in voters if a is not None]
    clustering = await equivalence.acluster([a for _, a in voted])
    telemetry.ROUND_CLUSTERINGS.inc()
    return RoundVotes(
        round=round_index,
        tallied=len(answers),
        groups=[[voted[i][0] for i in group] for group in clustering.groups],
        timeouts=clustering.timeouts,
        oversized=clustering.oversized,
    )


def voter_groups(candidates: Sequence[Candidate], votes: RoundVotes | None) -> list[list[int]]:
    """``votes``' classes as positions among ``candidates``' voters (those with an answer), the form
    :mod:`mrsa.engine.selection` tallies; indices ``candidates`` does not hold are left out."""
    if votes is None:
        return []
    position = {c.index: i for i, c in enumerate(c for c in candidates if c.answer is not None)}
    groups = [[position[i] for i in group if i in position] for group in votes.groups]
    return [g for g in groups if g]


@dataclass
class _Flight:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    requested: int = 0  # requests so far (each after its candidate was saved)
    covered: int = 0  # the requests the last finished run started after
    waiting: int = 0
    last: RoundVotes | None = None


class VoteKeeper:
    """Clusters and stores rounds' votes for one process, one run at a time per round, and
    remembers the last ``REMEMBERED`` it stored (so ending a job reads none of them back), and the
    answers it read of the last ``ANSWERS_REMEMBERED`` rounds (each answer up to
    ``ANSWER_CHARS``: a longer one is read again each time)."""

    REMEMBERED = 4096
    ANSWERS_REMEMBERED = 1024
    ANSWER_CHARS = 1024

    def __init__(self, store: JobStore, equivalence: Equivalence) -> None:
        self.store = store
        self.equivalence = equivalence
        self._flights: dict[tuple[str, int], _Flight] = {}
        self._stored: OrderedDict[tuple[str, int], RoundVotes] = OrderedDict()
        self._answers: OrderedDict[tuple[str, int], dict[int, str | None]] = OrderedDict()

    def stored(self, job_id: str, round_index: int) -> RoundVotes | None:
        """The votes this process last stored for the round, if it remembers them."""
        return self._stored.get((job_id, round_index))

    def _remember(self, job_id: str, votes: RoundVotes) -> None:
        key = (job_id, votes.round)
        self._stored[key] = votes
        self._stored.move_to_end(key)
        while len(self._stored) > self.REMEMBERED:
            self._stored.popitem(last=False)

    async def _round_answers(self, job_id: str, round_index: int) -> dict[int, str | None]:
        """The answers of every candidate of the round stored now (index → answer), reading only
        the ones not read before."""
        key = (job_id, round_index)
        known = self._answers.pop(key, None) or {}
        fresh = await self.store.get_candidates(job_id, round_index, exclude=known.keys())
        answers = {**known, **{c.index: c.answer for c in fresh}}
        known.update(
            (c.index, c.answer) for c in fresh if c.answer is None or len(c.answer) <= self.ANSWER_CHARS
        )
        self._answers[key] = known
        while len(self._answers) > self.ANSWERS_REMEMBERED:
            self._answers.popitem(last=False)
        return answers

    async def refresh(self, job_id: str, round_index: int, event: Event | None = None) -> RoundVotes:
        """Cluster the round's candidates stored now and store the classes. Call it after saving a
        candidate: it returns once a run that started after this call has stored its votes, and
        ``event`` after them (with the votes, in one store call, when this call's run stores them)."""
        key = (job_id, round_index)
        flight = self._flights.setdefault(key, _Flight())
        flight.requested += 1
        mine = flight.requested
        flight.waiting += 1
        try:
            async with flight.lock:
                if flight.covered >= mine and flight.last is not None:
                    # A run that started after this request covered it (and stored its votes).
                    if event is not None:
                        await self.store.add_event(job_id, event)
                    return flight.last
                started_after = flight.requested
                answers = await self._round_answers(job_id, round_index)
                votes = await cluster_round(round_index, answers, self.equivalence)
                await self.store.save_round_votes(job_id, votes, event)
                self._remember(job_id, votes)
                flight.covered, flight.last = started_after, votes
                return votes
        finally:
            flight.waiting -= 1
            if flight.waiting == 0:
                self._flights.pop(key, None)
