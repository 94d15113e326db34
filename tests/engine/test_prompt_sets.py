"""Prompt sets beside v1: every set is complete, and ``pacore`` frames the tails as reference
responses (for tail_source=answer_or_tail: a finished candidate is shown by its answer)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from mrsa.domain import JobStatus
from mrsa.engine import prompts
from tests.engine.test_engine import PROBLEM, make_spec, run_job, user_prompt
from tests.fakes import FakeBackend

REFERENCE = re.compile(r"<reference (\d+)>\n(.*?)\n</reference \1>", re.DOTALL)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


def test_every_set_has_every_template() -> None:
    assert {"v1", "pacore"} <= set(prompts.available_sets())
    for prompt_set in prompts.available_sets():
        prompts.check_prompt_set(prompt_set)


@given(
    problem=text.filter(str.strip),
    tails=st.lists(text.filter(lambda t: "</reference" not in t), min_size=1, max_size=5),
)
def test_pacore_shows_the_tails_as_numbered_references_after_the_problem(
    problem: str, tails: list[str]
) -> None:
    prompt = prompts.aggregation_prompt("pacore", problem, tails)
    assert prompt.startswith(problem + "\n\n")  # byte-identical prefix across a job's prompts
    assert [(int(n), t) for n, t in REFERENCE.findall(prompt)] == list(enumerate(tails, 1))
    assert "reference response" in prompt and "\\boxed{}" in prompt


def reasoning_script(request: object) -> str:
    return "<think>let me see, 6 times 7</think>The answer is \\boxed{42}."


async def test_a_pacore_job_with_answer_or_tail_shows_the_finished_answers() -> None:
    backend = FakeBackend(reasoning_script, split_reasoning=True)
    spec = make_spec(population=3, subset=2, rounds=1, prompts="pacore", tail_source="answer_or_tail")
    result, _, _ = await run_job(backend, spec)
    assert result.status == JobStatus.succeeded and result.answer == "42"
    for request in backend.requests_for(round=1):
        prompt = user_prompt(request)
        assert prompt.startswith(PROBLEM + "\n\n")
        assert [t for _, t in REFERENCE.findall(prompt)] == ["The answer is \\boxed{42}."] * 2
    round0 = user_prompt(backend.requests_for(round=0)[0])
    assert round0 == prompts.round0_prompt("pacore", PROBLEM)
