"""Take the README's console screenshot (``docs/img/console.png``) from the demo's job.

The picture should tell the story a first-time reader can follow: the problem ``make demo`` solves,
on the embedded SmolLM2-135M with the demo's parameters, its two rounds in the lineage graph, the
votes of each round, and one round-1 candidate opened on its prompt (the problem and its parents'
tails). It runs the real service as the console's browser tests do (``tests/console_stack.py``:
``redis-server``, ``mrsa serve`` with auth on, ``mrsa worker`` starting the embedded model itself)
and the same headless Chromium (``tests/browser.py``), then prints the job's rounds so the caption
can say truthfully what the model got right or wrong.

    .venv/bin/python -m tests.console_screenshot                    # the demo's problem and budget
    .venv/bin/python -m tests.console_screenshot --seed 3 --open 1/2 --out /tmp/console.png

The PNG is reduced to 256 colours with Pillow (``FASTOCTREE``) to keep the repository small.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image
from playwright.sync_api import expect

from tests.browser import chromium_context
from tests.console_stack import API_KEY, console_stack

ROOT = Path(__file__).resolve().parent.parent
DEMO_PROBLEM = "What is 9+8?"  # the Makefile's PROBLEM, run with its DEMO_FLAGS
DEMO_PRESET = "smoke"
DEMO_PARAMS: dict[str, Any] = {"budget": 256}
JOB_WAIT_S = 900.0


def pick_candidate(result: dict[str, Any]) -> tuple[int, int]:
    """The last round's first candidate that gave the selected answer (else its first)."""
    last = result["rounds"][-1]
    for cand in last["candidates"]:
        if result["answer"] is not None and cand["answer"] == result["answer"]:
            return last["index"], cand["index"]
    return last["index"], last["candidates"][0]["index"]


def describe(result: dict[str, Any]) -> str:
    lines = [f"answer: {result['answer']}"]
    for rnd in result["rounds"]:
        votes = ", ".join(f"{v['answer']}×{v['count']} ({v['finished']} finished)" for v in rnd["votes"])
        cands = "; ".join(
            f"#{c['index']} {c['answer']} {c['finish_reason']} {c['decode_tokens']} tok parents {c['parents']}"
            for c in rnd["candidates"]
        )
        lines.append(f"round {rnd['index']}: votes {votes or '—'} | {cands}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", default=DEMO_PROBLEM)
    parser.add_argument("--budget", type=int, default=DEMO_PARAMS["budget"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--open", help="ROUND/INDEX of the candidate to open (default: see pick_candidate)")
    parser.add_argument(
        "--backend",
        help="URL of a running model server for the worker (default: the worker starts the embedded model)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "console.png")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="mrsa-screenshot-") as tmp,
        console_stack(Path(tmp), ["--backend", args.backend] if args.backend else []) as stack,
    ):
        job_id = stack.submit(args.problem, DEMO_PRESET, budget=args.budget, seed=args.seed)
        stack.wait_status(job_id, ("succeeded",), JOB_WAIT_S)
        result = stack.api("GET", f"/v1/jobs/{job_id}/result")
        print(describe(result))
        if args.open:
            round_index, index = (int(x) for x in args.open.split("/"))
        else:
            round_index, index = pick_candidate(result)
        with chromium_context() as context:
            page = context.new_page()
            page.goto(f"{stack.console_url}#/jobs/{job_id}/c/{round_index}/{index}")
            dialog = page.get_by_test_id("api-key-dialog")
            dialog.locator("input[data-testid=api-key-input]").fill(API_KEY)
            dialog.locator("button[data-testid=api-key-save]").click()
            expect(page.get_by_test_id("job-status")).to_have_text("succeeded")
            expect(page).to_have_url(re.compile(rf"#/jobs/{job_id}/c/{round_index}/{index}$"))
            expect(page.get_by_test_id("candidate-panel")).to_be_visible()
            raw = Path(tmp) / "console.png"
            page.screenshot(path=str(raw))
        with Image.open(raw) as image:
            image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(args.out, optimize=True)
        print(f"opened round {round_index} candidate #{index}; wrote {args.out}")


if __name__ == "__main__":
    main()
