"""Islands (the RSA authors' harness): the population split into M islands that merge in pairs.

Candidate ``i`` of a stage belongs to island ``i // (N / islands)``: islands are contiguous blocks of
indices, so merging islands ``2j`` and ``2j + 1`` gives island ``j`` of the next phase with no
renumbering. The T+1 generation stages are cut into log2(M)+1 phases of (nearly) equal length;
phase ``p`` has M / 2^p islands, so the last phase is one island holding the whole population.
An aggregation prompt of stage ``s`` draws its parents (from stage ``s - 1``) within the prompt's own
island in stage ``s``'s layout: at a merge, a candidate already reads from the merged island.

The harness requires its "loops" (our T+1 stages) to be a multiple of the phase count, with phases
of equal length. Here the P phases' lengths differ by at most one, the longer ones first: the
harness's schedule whenever it divides evenly, and any T with log2(M) ≤ T otherwise (the split
islands aggregate at least once whenever T allows it).
"""

from __future__ import annotations


def phases(islands: int) -> int:
    """Phases of a schedule with M islands: one per island count M, M/2, …, 1."""
    return islands.bit_length()  # log2(M) + 1 for a power of two


def phase_starts(islands: int, rounds: int) -> list[int]:
    """The first stage of each phase: T+1 stages in log2(M)+1 phases, lengths differing by at most
    one with the longer phases first."""
    count = phases(islands)
    base, extra = divmod(rounds + 1, count)
    return [p * base + min(p, extra) for p in range(count)]


def islands_at(islands: int, rounds: int, stage: int) -> int:
    """How many islands stage ``stage`` (0 = round 0, …, T) has, for M = ``islands``; a stage after
    T (the final aggregation call) has one."""
    if islands == 1:
        return 1
    phase = sum(1 for start in phase_starts(islands, rounds) if start <= stage) - 1
    return islands >> phase


def island_size(population: int, count: int) -> int:
    """Candidates per island when the population of N is split into ``count`` islands."""
    return population // count


def island_of(population: int, count: int, index: int) -> int:
    """The island of candidate ``index`` when N = ``population`` is split into ``count`` islands."""
    return index // island_size(population, count)


def island_members(population: int, count: int, island: int) -> range:
    """Candidate indices of ``island`` when the population is split into ``count`` islands."""
    size = island_size(population, count)
    return range(island * size, (island + 1) * size)
