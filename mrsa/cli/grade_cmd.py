"""``mrsa grade GOLD PREDICTION``: the sweep's grader on one answer (exit 0 whatever the verdict)."""

from __future__ import annotations

from typing import Annotated

import typer

from mrsa.cli.common import EXIT_USAGE, fail, out_console, print_json


def grade(
    gold: Annotated[str, typer.Argument(help="The gold answer (LaTeX), e.g. '\\frac{1}{576}'.")],
    prediction: Annotated[
        str,
        typer.Argument(
            help="The answer to grade. Text holding \\boxed{} is graded on its last box, as in a sweep; "
            "anything else is graded as the answer itself."
        ),
    ],
    timeout: Annotated[float, typer.Option(help="Wall-clock limit of the grading, seconds.")] = 10.0,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print {correct, reason, answer, detail} as JSON.")
    ] = False,
) -> None:
    """Grade PREDICTION against GOLD with math-verify (gold first) and print correct or wrong, with
    the reason: correct, wrong, no_boxed, parse_error or timeout."""
    from evals.grading import Grader, boxed_answer

    if not gold.strip():
        fail("gold: give a non-empty gold answer", EXIT_USAGE)
    if timeout <= 0:
        fail("timeout: must be > 0", EXIT_USAGE)
    answer = boxed_answer(prediction) if "\\boxed" in prediction or "\\fbox" in prediction else prediction
    with Grader(workers=1, timeout_s=timeout) as grader:
        verdict = grader.grade(gold.strip(), answer.strip() if answer is not None else None)
    if json_out:
        print_json(verdict)
        return
    word = "correct" if verdict.correct else "wrong"
    detail = f" — {verdict.detail}" if verdict.detail else ""
    shown = (
        f" (graded answer: {verdict.answer})"
        if verdict.answer is not None and verdict.answer != prediction
        else ""
    )
    out_console.print(f"{word}: {verdict.reason}{detail}{shown}", markup=False)
