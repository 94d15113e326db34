"""The web console in a real browser (headless Debian Chromium through Playwright) against the real
service: ``mrsa serve`` with auth on, ``mrsa worker``, ``redis-server`` and a real model (the
embedded SmolLM2 server, or the inference-server simulator for hostile output and big shapes).

The tests select elements only through the DOM contract the console promises (``data-testid``,
``data-knob``, ``data-error-for``… see docs/console.md), and compare what the page shows with
what the REST API returns for the same job. Screenshots land in ``test-artifacts/console/`` (or
``$MRSA_ARTIFACTS_DIR/console``)."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Locator, Page, expect

from evals.configs import SweepConfig
from evals.rundir import Manifest, RunDir
from mrsa.params import resolve_params
from testkit.simulator.process import running_simulator
from tests.browser import artifacts_dir, chromium_context
from tests.console_stack import API_KEY, TERMINAL, ConsoleStack, console_stack

pytestmark = [pytest.mark.embedded, pytest.mark.redis, pytest.mark.timeout(360)]

SMOKE_N, SMOKE_K, SMOKE_T = 4, 2, 1  # the smoke preset's shape
# Short candidates, so the embedded model (one request at a time on a busy CPU) ends the job fast.
SMOKE_BUDGETS = {"budget": 24, "tail": 12}
JOB_WAIT_S = 240.0  # the embedded model on a busy 2-core machine can be slow
# What the simulator's model writes for problems that contain "HOSTILE": markup that would run,
# or load an image, if the console inserted it as HTML.
HOSTILE_MARKUP = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
REPORT_RUN, REPORT_PLOT, REPORT_ACCURACY = "sweep-smoke", "accuracy_vs_tokens.png", "0.500"
HOSTILE_PROBLEM = 'HOSTILE: what is <b onmouseover="window.__pwned=3">6*7</b>?'


@dataclass
class Console:
    """One browser tab on the console of ``stack``; collects the page's errors for failures."""

    page: Page
    stack: ConsoleStack
    problems: list[str] = field(default_factory=list)

    def goto(self, route: str = "#/jobs") -> None:
        self.page.goto(self.stack.console_url + route)

    def sign_in(self) -> None:
        """The console asked for the key (its first data call got 401): enter it."""
        dialog = self.page.get_by_test_id("api-key-dialog")
        expect(dialog).to_be_visible()
        dialog.locator("input[data-testid=api-key-input]").fill(API_KEY)
        dialog.locator("button[data-testid=api-key-save]").click()
        expect(dialog).to_be_hidden()

    def shot(self, name: str, full_page: bool = False) -> Path:
        path = artifacts_dir() / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def submit_form(self, problem: str, preset: str, **knobs: int | float) -> None:
        form = self.page.get_by_test_id("submit-form")
        form.locator("textarea[name=problem]").fill(problem)
        form.locator("select[name=preset]").select_option(preset)
        for knob, value in knobs.items():
            form.locator(f"[data-knob={knob}]").fill(str(value))
        form.get_by_test_id("submit-button").click()

    def submitted_job_id(self) -> str:
        """After a successful submit the console shows the new job's page."""
        expect(self.page).to_have_url(re.compile(r"#/jobs/[A-Za-z0-9_-]+$"), timeout=20_000)
        return self.page.url.rsplit("/", 1)[1]

    def status(self) -> Locator:
        return self.page.get_by_test_id("job-status")

    def nodes(self, round_index: int | None = None) -> Locator:
        where = "" if round_index is None else f'[data-round="{round_index}"]'
        return self.page.locator(f"svg[data-testid=lineage] [data-testid=node]{where}")

    def node(self, round_index: int, index: int) -> Locator:
        return self.nodes(round_index).and_(self.page.locator(f'[data-index="{index}"]'))

    def edges_into(self, round_index: int, index: int) -> Locator:
        return self.page.locator(
            f'svg[data-testid=lineage] [data-testid=edge][data-to-round="{round_index}"][data-to-index="{index}"]'
        )

    def diagnostics(self) -> str:
        return "\n".join(["--- browser errors", *self.problems, self.stack.logs()])


def open_tab(context: BrowserContext, stack: ConsoleStack) -> Iterator[Console]:
    """A fresh tab (its own sessionStorage, so the key is asked for again); on teardown prints the
    browser's errors and the processes' last log lines (shown by pytest when the test failed)."""
    page = context.new_page()
    console = Console(page, stack)
    page.on("pageerror", lambda exc: console.problems.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: console.problems.append(f"console.{msg.type}: {msg.text}"))
    try:
        yield console
    finally:
        print(console.diagnostics())
        page.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    with chromium_context() as context:
        yield context


@pytest.fixture(scope="module")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory, embedded_url: str) -> Iterator[ConsoleStack]:
    with console_stack(tmp_path_factory.mktemp("console-embedded"), ["--backend", embedded_url]) as stack:
        yield stack


@pytest.fixture(scope="module")
def simulated_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    """The simulator (vLLM-like, fast, with hostile output for HOSTILE problems) behind a worker
    that runs a whole zaya1-extra-high round at once."""
    flags = [
        *("--hostile-answer", HOSTILE_MARKUP, "--median-tokens", "80"),
        *("--step-base-ms", "0.2", "--step-per-seq-ms", "0.01"),
    ]
    reports = tmp_path_factory.mktemp("console-reports")
    make_report_run(reports / REPORT_RUN)
    with running_simulator(flags) as sim:
        worker = ["--backend", sim, "--backend-kind", "vllm", "--model", "mrsa-sim", "--concurrency", "64"]
        serve = ["--reports-dir", str(reports)]
        with console_stack(tmp_path_factory.mktemp("console-sim"), worker, serve) as stack:
            yield stack


def make_report_run(folder: Path) -> None:
    """A run folder as ``mrsa bench --out`` + ``mrsa report`` leave it: manifest, report.md with a
    table, a plot and markup in a cell, metrics.json and the PNG (drawn by matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    config = SweepConfig(id="smoke", preset="smoke", overrides={}, params=resolve_params("smoke"))
    RunDir(folder).save_manifest(
        Manifest(model="mrsa-sim", seeds=[0], configs=[config], datasets=[], grading={})
    )
    fig, ax = plt.subplots(figsize=(4, 3), dpi=60)
    ax.plot([100, 200, 400], [0.2, 0.4, 0.5], marker="o")
    ax.set_xlabel("decode tokens")
    ax.set_ylabel("accuracy")
    fig.savefig(folder / REPORT_PLOT, bbox_inches="tight")
    plt.close(fig)
    (folder / "report.md").write_text(
        "# mrsa benchmark report\n\n"
        "| config | accuracy | note |\n|---|---:|---|\n"
        f"| smoke | {REPORT_ACCURACY} | {HOSTILE_MARKUP} |\n\n"
        f"![accuracy against decode tokens]({REPORT_PLOT})\n",
        encoding="utf-8",
    )
    (folder / "metrics.json").write_text('{"smoke": {"accuracy": 0.5}}\n', encoding="utf-8")


@pytest.fixture
def embedded_console(browser: BrowserContext, embedded_stack: ConsoleStack) -> Iterator[Console]:
    yield from open_tab(browser, embedded_stack)


@pytest.fixture
def simulated_console(browser: BrowserContext, simulated_stack: ConsoleStack) -> Iterator[Console]:
    yield from open_tab(browser, simulated_stack)


# One look at the job page: its status, the nodes drawn, the candidates its vote boxes count (each
# box's bars, "no answer" included, add up to the candidates of its round read so far) and the
# decode tokens of its usage rows.
LIVE_STATE_JS = """() => {
  const sum = (sel, attr) => [...document.querySelectorAll(sel)].reduce((n, el) => n + Number(el.getAttribute(attr)), 0);
  const status = document.querySelector('[data-testid=job-status]');
  return {
    status: status ? status.textContent.trim() : '',
    nodes: document.querySelectorAll('svg[data-testid=lineage] [data-testid=node]').length,
    votes: sum('[data-testid=votes] li[data-answer] [data-count]', 'data-count'),
    decode: sum('[data-testid=usage] tr[data-round] [data-field=decode-tokens]', 'data-value'),
  };
}"""


@dataclass(frozen=True)
class LiveState:
    nodes: int
    votes: int
    decode: int


def watch_lineage_fill(console: Console, total: int, within_s: float) -> list[LiveState]:
    """What the page showed while the job was not yet terminal (polled every 50 ms); takes the
    "during" screenshot the first time a partly filled graph has its votes and usage caught up (or,
    if that never happens, the first time the graph is partly filled)."""
    seen: list[LiveState] = []
    shot = ""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        state = console.page.evaluate(LIVE_STATE_JS)
        if state["status"] in TERMINAL:
            return seen
        now = LiveState(state["nodes"], state["votes"], state["decode"])
        if not seen or seen[-1] != now:
            partial = 0 < now.nodes < total
            caught_up = partial and now.votes == now.nodes and now.decode > 0
            if (partial and not shot) or (caught_up and shot != "caught up"):
                console.shot("job-page-running")
                shot = "caught up" if caught_up else "partial"
            seen.append(now)
        time.sleep(0.05)
    raise AssertionError(f"the job page did not reach a terminal status in {within_s:.0f}s: seen {seen}")


def test_a_smoke_job_fills_the_lineage_live_and_a_candidate_shows_its_parents_tails(
    embedded_console: Console,
) -> None:
    console, page, stack = embedded_console, embedded_console.page, embedded_console.stack
    response = page.goto(stack.url + "/")
    expect(page).to_have_url(re.compile(r"/ui/"))
    assert response is not None
    csp = response.headers.get("content-security-policy", "")
    assert "default-src 'self'" in csp and "object-src 'none'" in csp, csp
    console.sign_in()
    assert page.evaluate("sessionStorage.getItem('mrsa.apiKey')") == API_KEY
    assert page.evaluate("localStorage.length") == 0  # the key lives for the tab's session only
    expect(page.locator("table[data-testid=jobs-table]")).to_be_visible()
    console.shot("jobs-page")

    console.submit_form("What is 7*6?", "smoke", **SMOKE_BUDGETS)
    job_id = console.submitted_job_id()
    total = SMOKE_N * (SMOKE_T + 1)
    seen = watch_lineage_fill(console, total, JOB_WAIT_S)
    assert any(0 < s.nodes < total for s in seen), f"the graph never showed a partial population: {seen}"
    # Votes and usage follow the candidates while the job runs, not only once it has ended.
    live = [s for s in seen if 0 < s.nodes < total and s.votes == s.nodes and s.decode > 0]
    assert live, f"votes/usage never caught up with the graph while the job ran: {seen}"
    expect(console.status()).to_have_text("succeeded")
    expect(console.nodes()).to_have_count(total)

    result = stack.api("GET", f"/v1/jobs/{job_id}/result")
    expect(page.locator("svg[data-testid=lineage] [data-testid=round-column]")).to_have_count(SMOKE_T + 1)
    for summary in result["rounds"]:
        r = summary["index"]
        expect(console.nodes(r)).to_have_count(SMOKE_N)
        expect(page.locator(f'[data-testid=votes][data-round="{r}"]')).to_have_count(1)
        for cand in summary["candidates"]:
            node = console.node(r, cand["index"])
            expect(node).to_have_attribute("data-answer", cand["answer"] or "")
            expect(node).to_have_attribute("data-finish", cand["finish_reason"])
            expect(node).to_have_attribute("data-decode-tokens", str(cand["decode_tokens"]))
            edges = console.edges_into(r, cand["index"])
            expect(edges).to_have_count(SMOKE_K if r >= 1 else 0)
            froms = {
                (e.get_attribute("data-from-round"), e.get_attribute("data-from-index")) for e in edges.all()
            }
            assert froms == {(str(r - 1), str(p)) for p in cand["parents"]}, (r, cand, froms)
    final_votes = page.get_by_test_id("final-votes")
    expect(final_votes.get_by_test_id("selected-answer")).to_have_text(result["answer"] or "")
    if result["answer"] is None:  # said in words, not left blank
        expect(final_votes).to_contain_text("Selected answer: none")
    usage_text = re.sub(r"[\s,.\u202f']", "", page.get_by_test_id("usage").text_content() or "")
    assert str(result["usage"]["decode_tokens"]) in usage_text, usage_text
    console.shot("job-page-done")

    # A round-1 candidate: its prompt holds the tails of its K parents, exactly as the API has them.
    stored = stack.api("GET", f"/v1/jobs/{job_id}/rounds/1/candidates/0")
    parent_tails = [
        stack.api("GET", f"/v1/jobs/{job_id}/rounds/0/candidates/{p}")["tail"] for p in stored["parents"]
    ]
    console.node(1, 0).click()
    expect(page).to_have_url(re.compile(rf"#/jobs/{job_id}/c/1/0$"))
    panel = page.get_by_test_id("candidate-panel")
    expect(panel).to_be_visible()
    shown_prompt = panel.get_by_test_id("candidate-prompt").text_content() or ""
    assert shown_prompt == stored["prompt"]
    for tail in parent_tails:
        assert tail and tail in shown_prompt
    assert panel.get_by_test_id("candidate-tail").text_content() == stored["tail"]
    expect(panel.get_by_test_id("candidate-finish")).to_contain_text(stored["finish_reason"])
    answer_row = panel.get_by_test_id("candidate-answer").locator("xpath=..")
    expect(answer_row).to_have_text(stored["answer"] if stored["answer"] is not None else "none")
    expect(panel.get_by_test_id("candidate-content")).to_have_text(stored["content"], use_inner_text=False)
    reasoning = panel.locator("details[data-testid=candidate-reasoning]")
    if reasoning.count():
        assert reasoning.evaluate("d => d.open") is False  # collapsed by default
    links = panel.get_by_test_id("candidate-parent")
    expect(links).to_have_count(SMOKE_K)
    shown_parents = {(a.get_attribute("data-round"), a.get_attribute("data-index")) for a in links.all()}
    assert shown_parents == {("0", str(p)) for p in stored["parents"]}
    console.shot("candidate-panel")

    first_parent = stored["parents"][0]
    panel.locator(f'[data-testid=candidate-parent][data-index="{first_parent}"]').click()
    expect(page).to_have_url(re.compile(rf"#/jobs/{job_id}/c/0/{first_parent}$"))
    expect(panel.get_by_test_id("candidate-tail")).to_have_text(parent_tails[0], use_inner_text=False)

    console.goto("#/jobs")
    row = page.locator(f'table[data-testid=jobs-table] tr[data-job-id="{job_id}"]')
    expect(row.locator("[data-field=status]")).to_have_text("succeeded")
    expect(row.locator("[data-field=preset]")).to_have_text("smoke")
    expect(row.locator("[data-field=progress]")).to_contain_text(f"{SMOKE_T}/{SMOKE_T}")
    expect(row.locator("button[data-action=cancel]")).to_have_count(0)  # an ended job has none


def api_field_message(stack: ConsoleStack, body: dict[str, Any], knob: str) -> str:
    """The API's own 422 message for ``knob`` on this body (what the console must show)."""
    r = httpx.post(
        f"{stack.url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    )
    assert r.status_code == 422, r.text
    msgs = [
        d["msg"]
        for d in r.json()["detail"]
        if knob in [str(p) for p in d["loc"]] or d["msg"].startswith(knob)
    ]
    assert msgs, r.text
    return str(msgs[0])


def test_a_validation_error_appears_next_to_its_field(embedded_console: Console) -> None:
    console, page, stack = embedded_console, embedded_console.page, embedded_console.stack
    console.goto("#/jobs")
    console.sign_in()
    jobs_before = len(stack.api("GET", "/v1/jobs")["jobs"])
    for knobs, knob in (({"population": 0}, "population"), ({"population": 2, "subset": 3}, "subset")):
        body = {"problem": "What is 7*6?", "preset": "smoke", "params": knobs}
        expected = api_field_message(stack, body, knob)
        for name in ("population", "subset"):
            page.locator(f"[data-testid=submit-form] [data-knob={name}]").fill("")
        console.submit_form("What is 7*6?", "smoke", **knobs)
        expect(page.locator(f"[data-error-for={knob}]")).to_contain_text(expected)
        expect(page).to_have_url(re.compile(r"#/jobs$"))  # no job was made
    console.shot("validation-error")
    assert len(stack.api("GET", "/v1/jobs")["jobs"]) == jobs_before

    page.get_by_test_id("api-key-forget").click()  # the next data call asks for the key again
    expect(page.get_by_test_id("api-key-dialog")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('mrsa.apiKey')") is None


def test_jobs_are_cancelled_from_the_job_page_and_from_the_jobs_table(embedded_console: Console) -> None:
    console, page, stack = embedded_console, embedded_console.page, embedded_console.stack
    console.goto("#/jobs")
    console.sign_in()
    console.submit_form("Count slowly from 1 to 500.", "smoke", budget=400, rounds=3)
    job_id = console.submitted_job_id()
    expect(console.status()).to_have_text("running", timeout=30_000)
    page.get_by_test_id("cancel-job").click()
    expect(console.status()).to_have_text("cancelled", timeout=30_000)
    expect(page.get_by_test_id("cancel-job")).to_have_count(0)
    assert stack.api("GET", f"/v1/jobs/{job_id}")["status"] == "cancelled"

    # One more, still queued behind nothing or running: cancelled from its row in the jobs table.
    queued = stack.submit("Count slowly from 1 to 900.", "smoke", budget=400, rounds=3)
    console.goto("#/jobs")
    row = page.locator(f'table[data-testid=jobs-table] tr[data-job-id="{queued}"]')
    row.locator("button[data-action=cancel]").click()
    expect(row.locator("[data-field=status]")).to_have_text("cancelled", timeout=30_000)
    assert stack.api("GET", f"/v1/jobs/{queued}")["status"] == "cancelled"
    console.shot("jobs-page-cancelled")


def test_model_output_with_markup_is_shown_as_text_and_never_run(simulated_console: Console) -> None:
    console, page, stack = simulated_console, simulated_console.page, simulated_console.stack
    console.goto("#/jobs")
    console.sign_in()
    console.submit_form(HOSTILE_PROBLEM, "smoke", budget=400)  # room to finish and write the answer
    job_id = console.submitted_job_id()
    expect(console.status()).to_have_text("succeeded", timeout=60_000)
    expect(console.nodes()).to_have_count(SMOKE_N * (SMOKE_T + 1))

    hostile = [
        (r, i)
        for r in range(SMOKE_T + 1)
        for i in range(SMOKE_N)
        if HOSTILE_MARKUP in stack.api("GET", f"/v1/jobs/{job_id}/rounds/{r}/candidates/{i}")["content"]
    ]
    assert hostile, "the simulator wrote no hostile output (check --hostile-answer)"
    r, i = hostile[0]
    console.node(r, i).click()
    panel = page.get_by_test_id("candidate-panel")
    expect(panel.get_by_test_id("candidate-content")).to_contain_text(HOSTILE_MARKUP, use_inner_text=True)
    expect(panel.get_by_test_id("candidate-prompt")).to_contain_text(HOSTILE_PROBLEM, use_inner_text=True)
    assert panel.locator("script, img, b").count() == 0  # no element was made from the text
    page.mouse.move(10, 10)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    result = stack.api("GET", f"/v1/jobs/{job_id}/result")
    for summary in result["rounds"]:  # extracted answers with markup: literal in the graph too
        for cand in summary["candidates"]:
            if cand["answer"] and "<" in cand["answer"]:
                expect(console.node(summary["index"], cand["index"])).to_have_attribute(
                    "data-answer", cand["answer"]
                )
    if result["answer"] and "<" in result["answer"]:
        expect(page.get_by_test_id("selected-answer")).to_have_text(result["answer"])
    inline = page.evaluate(
        "document.querySelectorAll('script:not([src]), img[src=x], b[onmouseover]').length"
    )
    assert inline == 0
    console.shot("hostile-candidate")


def test_a_zaya1_extra_high_job_is_readable_at_1280x800(simulated_console: Console) -> None:
    """The biggest preset's shape, N=32 and T=8 (288 candidates, 1024 edges), with small budgets."""
    console, page, stack = simulated_console, simulated_console.page, simulated_console.stack
    n, k, t = 32, 4, 8
    job_id = stack.submit("What is 12*12?", "zaya1-extra-high", budget=128, tail=32)
    stack.wait_status(job_id, ("succeeded",), JOB_WAIT_S)
    console.goto(f"#/jobs/{job_id}")
    console.sign_in()
    expect(console.status()).to_have_text("succeeded")
    expect(page.locator("svg[data-testid=lineage] [data-testid=round-column]")).to_have_count(t + 1)
    expect(console.nodes()).to_have_count(n * (t + 1), timeout=30_000)
    expect(page.locator("svg[data-testid=lineage] [data-testid=edge]")).to_have_count(n * k * t)
    for r in range(t + 1):
        expect(console.nodes(r)).to_have_count(n)
    expect(page.get_by_text("console error:")).to_have_count(0)  # e.g. no ResizeObserver loop
    console.shot("zaya1-extra-high")
    console.shot("zaya1-extra-high-full", full_page=True)
    # Usable at 1280×800: the page itself never scrolls sideways (a wide graph scrolls in its box).
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280

    console.node(t, 0).click()  # the graph beside the open panel, at this size
    expect(page).to_have_url(re.compile(rf"#/jobs/{job_id}/c/{t}/0$"))
    expect(page.get_by_test_id("candidate-panel").get_by_test_id("candidate-parent")).to_have_count(k)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    # The open candidate's edges stand out: K to its parents (none to children: the last round).
    highlighted = page.locator("svg[data-testid=lineage] [data-testid=edge].hl-parent")
    expect(highlighted).to_have_count(k)
    assert {e.get_attribute("data-to-index") for e in highlighted.all()} == {"0"}
    expect(page.get_by_text("console error:")).to_have_count(0)
    console.shot("zaya1-extra-high-candidate")


def test_a_sweep_report_shows_its_tables_and_plots(simulated_console: Console) -> None:
    """A run folder under the server's --reports-dir: listed, and opened with its table (markup in
    a cell shown as text) and its plot (an image that loaded)."""
    console, page = simulated_console, simulated_console.page
    console.goto("#/reports")
    console.sign_in()
    item = page.locator(f'[data-testid=reports-list] [data-testid=report][data-name="{REPORT_RUN}"]')
    expect(item).to_have_count(1)
    item.locator("a").first.click()
    view = page.get_by_test_id("report-view")
    expect(view.locator("table td", has_text=REPORT_ACCURACY)).to_have_count(1)
    expect(view.locator("table")).to_contain_text(HOSTILE_MARKUP, use_inner_text=True)
    plot = view.locator("img")
    expect(plot).to_have_count(1)
    page.wait_for_function(
        "() => { const i = document.querySelector('[data-testid=report-view] img'); "
        "return i && i.complete && i.naturalWidth > 0; }"
    )
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert view.locator("script, table img").count() == 0
    console.shot("report-view")


# Runs of KeyedThrottle (the job page reads a round's summary through it) for requests of key "a"
# every 20 ms for 1.2 s and of key "b" once, with a 300 ms interval and runs that take 50 ms.
THROTTLE_JS = """async () => {
  const { KeyedThrottle } = await import(new URL('static/throttle.js', location.href).href);
  const t0 = performance.now();
  const runs = [];
  const inFlight = { a: 0, b: 0 };
  let overlapped = false; // two runs of one key at once
  const throttle = new KeyedThrottle(async (key) => {
    inFlight[key] += 1;
    overlapped = overlapped || inFlight[key] > 1;
    runs.push({ key, at: performance.now() - t0 });
    await new Promise((r) => setTimeout(r, 50));
    inFlight[key] -= 1;
  }, 300);
  throttle.request('b');
  let lastRequest = 0;
  while (performance.now() - t0 < 1200) {
    lastRequest = performance.now() - t0;
    throttle.request('a');
    await new Promise((r) => setTimeout(r, 20));
  }
  await new Promise((r) => setTimeout(r, 700));
  throttle.close();
  return { runs, lastRequest, overlapped };
}"""


def test_round_summaries_are_read_at_most_once_per_interval_per_round(simulated_console: Console) -> None:
    """The throttle behind live votes: the first request runs at once, later ones at most once per
    interval per key, the last request is always followed by a run, and a key's runs never overlap."""
    console, page = simulated_console, simulated_console.page
    console.goto("#/jobs")
    console.sign_in()
    out = page.evaluate(THROTTLE_JS)
    a = [r["at"] for r in out["runs"] if r["key"] == "a"]
    b = [r["at"] for r in out["runs"] if r["key"] == "b"]
    assert len(b) == 1 and b[0] < 50, out  # another key is not held back by "a"
    assert a and a[0] < 50, out  # leading edge
    gaps = [later - earlier for earlier, later in itertools.pairwise(a)]
    assert all(gap >= 290 for gap in gaps), out  # ~60 requests, at most one run per 300 ms
    assert 3 <= len(a) <= 7, out
    assert a[-1] >= out["lastRequest"], out  # trailing edge: the last request was served
    assert not out["overlapped"], out
