// The job page: status, the live lineage graph, votes per round, final votes, usage, and the
// candidate panel. Live from the job's event stream: nodes straight from its candidate events; a
// round's summary (votes, usage, parents) re-read from GET /v1/jobs/{id}/rounds/{r} when an event
// says the round changed, at most once a second per round; complete rounds are read once.
import { ApiError, followEvents, getJson, postJson } from "./api.js";
import { CandidatePanel } from "./candidate.js";
import { clear, fmtInt, fmtSeconds, h, s, TERMINAL } from "./dom.js";
import { Lineage } from "./lineage.js";
import { KeyedThrottle } from "./throttle.js";
import { voteBars } from "./votes.js";

const REFRESH_MS = 1000; // the least time between two reads of one round's summary

function nodeFromSummary(round, c) {
  return { round, index: c.index, answer: c.answer, finish: c.finish_reason, decode: c.decode_tokens, parents: c.parents };
}

export class JobPage {
  constructor(root, target) {
    this.root = root;
    this.jobId = target.jobId;
    this.base = `/v1/jobs/${encodeURIComponent(this.jobId)}`;
    this.abort = new AbortController();
    this.summaries = new Map(); // round -> RoundSummary
    this.reads = new Map(); // round -> number of the latest read of its summary
    this.refresher = new KeyedThrottle((round) => this.refreshRound(round), REFRESH_MS);
    this.result = null;
    this.target = target;
    this.start().catch((err) => this.fatal(err));
  }

  close() {
    this.abort.abort();
    if (this.lineage) this.lineage.close();
    clearInterval(this.ticker);
    this.refresher.close();
  }

  fatal(err) {
    if (this.abort.signal.aborted) return;
    const text = err instanceof ApiError && err.status === 404 ? `No job ${this.jobId} (or not yours).` : `Cannot show job ${this.jobId}: ${err.message}`;
    clear(this.root).append(h("p", { class: "error" }, text), h("a", { href: "#/jobs" }, "← jobs"));
  }

  async start() {
    this.job = await getJson(this.base, { signal: this.abort.signal });
    const p = this.job.params;
    this.selectRound = p.selection === "aggregate" ? p.rounds + 1 : null;
    this.lastRound = this.selectRound ?? p.rounds;
    this.build();
    this.lineage = new Lineage(
      this.svg,
      { stages: p.rounds + 1, population: p.population, budget: p.budget, selectRound: this.selectRound },
      (round, index) => {
        location.hash = `#/jobs/${encodeURIComponent(this.jobId)}/c/${round}/${index}`;
      },
    );
    this.lineage.render();
    this.renderHead();
    await Promise.all(Array.from({ length: this.lastRound + 1 }, (_, r) => this.loadRound(r)));
    if (TERMINAL.has(this.job.status)) await this.loadResult();
    this.update(this.target);
    this.ticker = setInterval(() => this.renderUsage(), 1000);
    if (!TERMINAL.has(this.job.status)) this.follow();
  }

  build() {
    const p = this.job.params;
    this.status = h("span", { "data-testid": "job-status", class: `status status-${this.job.status}` }, this.job.status);
    this.cancel = h("button", { type: "button", "data-testid": "cancel-job" }, "Cancel job");
    this.cancel.addEventListener("click", () => this.cancelJob());
    this.streamState = h("span", { class: "muted" });
    this.error = h("p", { class: "error" });
    this.svg = s("svg", { "data-testid": "lineage", class: "lineage", role: "img", "aria-label": "lineage graph" });
    this.votesRow = h("div", { class: "round-votes" });
    this.votesRow.style.gridTemplateColumns = `repeat(${this.lastRound + 1}, minmax(0, 1fr))`;
    this.voteBoxes = new Map();
    for (let r = 0; r <= this.lastRound; r++) {
      const box = h("div", { "data-testid": "votes", "data-round": r, class: "votes" });
      this.voteBoxes.set(r, box);
      this.votesRow.append(box);
    }
    this.finalVotes = h("div", { "data-testid": "final-votes", class: "card final-votes" });
    this.usage = h("div", { "data-testid": "usage", class: "card usage" });
    this.main = h(
      "div",
      { class: "job-main" },
      h("div", { class: "lineage-wrap" }, this.svg),
      h(
        "p",
        { class: "legend muted" },
        "Columns are rounds; a node is a candidate, coloured by its answer (grey: none), solid outline = finished, dashed = truncated at the budget, size = decode tokens; edges go to the parents whose tails were in its prompt. Click a node.",
      ),
      this.votesRow,
      h("div", { class: "cards" }, this.finalVotes, this.usage),
    );
    this.body = h("div", { class: "job-body" }, this.main);
    this.panel = new CandidatePanel(this.body, this.jobId, `#/jobs/${encodeURIComponent(this.jobId)}`);
    const shape = `N=${p.population} · K=${p.subset} · T=${p.rounds} · β=${p.budget} · τ=${p.tail} · selection ${p.selection}`;
    clear(this.root).append(
      h(
        "section",
        { class: "job" },
        h(
          "div",
          { class: "job-head" },
          h("a", { href: "#/jobs", class: "back" }, "← jobs"),
          h("h2", {}, "Job ", h("span", { class: "mono" }, this.jobId)),
          this.status,
          TERMINAL.has(this.job.status) ? null : this.cancel,
          this.streamState,
        ),
        h("p", { class: "problem" }, this.job.problem_preview),
        h("p", { class: "muted" }, `${this.job.preset ? `preset ${this.job.preset} · ` : ""}${shape}${this.job.model ? ` · model ${this.job.model}` : ""}`),
        this.error,
        this.body,
      ),
    );
  }

  /** Route change within this job: open or close the candidate panel. */
  update(target) {
    this.target = target;
    if (!this.lineage) return;
    const c = target.candidate;
    this.body.classList.toggle("with-panel", Boolean(c));
    if (!c || Number.isNaN(c.round) || Number.isNaN(c.index)) {
      this.lineage.select(null, null);
      this.panel.hide();
      return;
    }
    this.lineage.select(c.round, c.index);
    this.panel.show(c.round, c.index, this.lineage.children(c.round, c.index));
  }

  renderHead() {
    const status = this.job.status;
    this.status.textContent = status;
    this.status.className = `status status-${status}`;
    if (TERMINAL.has(status)) this.cancel.remove(); // only a job that has not ended can be cancelled
    this.error.textContent = this.job.error || "";
  }

  async cancelJob() {
    this.cancel.disabled = true;
    try {
      this.job = await postJson(`${this.base}/cancel`, {});
      this.renderHead();
    } catch (err) {
      this.error.textContent = `cannot cancel: ${err.message}`;
    } finally {
      this.cancel.disabled = false;
    }
  }

  /** Rows of a round: N, or 1 for the final aggregation. */
  size(round) {
    return round === this.selectRound ? 1 : this.job.params.population;
  }

  /** A round whose N candidates are all stored: its summary can no longer change. */
  isComplete(round) {
    const summary = this.summaries.get(round);
    return Boolean(summary) && summary.candidates.length >= this.size(round);
  }

  async loadRound(round) {
    const read = (this.reads.get(round) || 0) + 1;
    this.reads.set(round, read);
    const summary = await getJson(`${this.base}/rounds/${round}`, { signal: this.abort.signal });
    if (this.reads.get(round) !== read) return; // a later read of this round is on its way
    this.summaries.set(round, summary);
    for (const c of summary.candidates) this.lineage.setNode(nodeFromSummary(round, c));
    this.renderVotes(round);
    this.renderUsage();
  }

  async loadResult() {
    try {
      this.result = await getJson(`${this.base}/result`, { signal: this.abort.signal });
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 409)) throw err;
    }
    this.renderFinal();
    this.renderUsage();
  }

  follow() {
    followEvents(`${this.base}/events`, {
      signal: this.abort.signal,
      onState: (state) => {
        this.streamState.textContent = state === "live" ? "● live" : state === "reconnecting" ? "reconnecting…" : "";
      },
      isOver: async () => {
        this.job = await getJson(this.base, { signal: this.abort.signal });
        return TERMINAL.has(this.job.status);
      },
      onEvent: (raw) => this.onEvent(JSON.parse(raw.data)),
    })
      .then(() => this.finish())
      .catch((err) => {
        if (!this.abort.signal.aborted) this.error.textContent = `event stream: ${err.message}`;
      });
  }

  onEvent(event) {
    if (event.type === "candidate") {
      this.lineage.setNode({
        round: event.round,
        index: event.index,
        answer: event.answer,
        finish: event.finish_reason,
        decode: event.decode_tokens,
        parents: event.parents || (this.lineage.get(event.round, event.index) || {}).parents || [],
      });
      this.refreshLive(event.round);
    } else if (event.type === "round") {
      this.refreshLive(event.round - 1);
    } else if (event.type === "status" && event.status) {
      this.job = { ...this.job, status: event.status };
      this.renderHead();
    } else if (event.type === "done") {
      this.job = { ...this.job, status: event.status, error: event.error, answer: event.answer };
      this.renderHead();
    }
  }

  /** An event says `round` changed: re-read its summary (throttled), unless it is complete (the
   * stream replays a job's events from the start: the complete rounds were read once already). */
  refreshLive(round) {
    if (round >= 0 && round <= this.lastRound && !this.isComplete(round)) this.refresher.request(round);
  }

  async refreshRound(round) {
    try {
      await this.loadRound(round);
    } catch (err) {
      if (!this.abort.signal.aborted) this.error.textContent = `cannot read round ${round}: ${err.message}`;
    }
  }

  async finish() {
    if (this.abort.signal.aborted) return;
    this.refresher.close();
    this.job = await getJson(this.base, { signal: this.abort.signal });
    this.renderHead();
    const open = Array.from({ length: this.lastRound + 1 }, (_, r) => r).filter((r) => !this.isComplete(r));
    await Promise.all(open.map((r) => this.loadRound(r)));
    await this.loadResult();
  }

  renderVotes(round) {
    const box = this.voteBoxes.get(round);
    const summary = this.summaries.get(round);
    if (!box || !summary) return;
    const total = this.size(round);
    const stored = summary.candidates.length;
    clear(box).append(
      h("h4", {}, round === this.selectRound ? "final call" : `round ${round}`, h("span", { class: "muted" }, ` ${stored}/${total}`)),
      stored ? voteBars(summary.votes, stored) : h("p", { class: "muted" }, "waiting"),
      h("p", { class: "muted small" }, summary.truncated ? `${summary.truncated} truncated` : ""),
    );
    if (!this.result) this.renderFinal();
  }

  /** The final votes: the result's once the job ended, else the last round's so far. */
  renderFinal() {
    const p = this.job.params;
    let votes = [];
    let caption = "";
    let total = p.population;
    if (this.result) {
      votes = this.result.votes;
      caption = `round ${p.rounds}, selection ${this.result.selection}`;
    } else {
      const last = this.summaries.get(p.rounds);
      votes = last ? last.votes : [];
      total = last ? last.candidates.length : 0;
      caption = `round ${p.rounds} so far`;
    }
    const answer = this.result ? this.result.answer : this.job.answer;
    // The answer element holds the answer text only (empty without one); the note beside it says why.
    const note = answer != null ? null : h("span", { class: "muted" }, TERMINAL.has(this.job.status) ? "none" : "not yet");
    clear(this.finalVotes).append(
      h("h3", {}, "Final votes ", h("span", { class: "muted" }, caption)),
      h("p", { class: "selected" }, "Selected answer: ", h("strong", { "data-testid": "selected-answer", class: "mono" }, answer ?? ""), note),
      total ? voteBars(votes, total) : h("p", { class: "muted" }, "no final-round candidate yet"),
    );
  }

  renderUsage() {
    if (!this.job || !this.summaries.size) return;
    const rows = [];
    let decode = 0;
    let prompt = 0;
    let requests = 0;
    for (let r = 0; r <= this.lastRound; r++) {
      const summary = this.summaries.get(r);
      if (!summary) continue;
      const u = summary.usage;
      decode += u.decode_tokens;
      prompt += u.prompt_tokens;
      requests += u.requests;
      rows.push(
        h(
          "tr",
          { "data-round": r },
          h("td", {}, r === this.selectRound ? "final" : String(r)),
          h("td", { class: "num", "data-field": "decode-tokens", "data-value": u.decode_tokens }, fmtInt(u.decode_tokens)),
          h("td", { class: "num", "data-field": "prompt-tokens", "data-value": u.prompt_tokens }, fmtInt(u.prompt_tokens)),
          h("td", { class: "num" }, String(u.requests)),
          h("td", { class: "num" }, String(summary.truncated)),
        ),
      );
    }
    const end = this.job.finished_at ?? (TERMINAL.has(this.job.status) ? this.job.updated_at : Date.now() / 1000);
    const elapsed = Math.max(0, end - this.job.created_at);
    const rate = elapsed > 0 ? decode / elapsed : null;
    clear(this.usage).append(
      h("h3", {}, "Usage"),
      h(
        "p",
        {},
        h("span", { "data-field": "elapsed" }, `elapsed ${fmtSeconds(elapsed)}`),
        " · ",
        h("span", { "data-field": "tokens-per-s" }, `${rate === null ? "—" : rate.toFixed(1)} decode tokens/s`),
      ),
      h(
        "table",
        { class: "usage-table" },
        h("thead", {}, h("tr", {}, ["round", "decode", "prompt", "requests", "truncated"].map((t) => h("th", {}, t)))),
        h("tbody", {}, rows),
        h(
          "tfoot",
          {},
          h("tr", {}, h("td", {}, "total"), h("td", { class: "num" }, fmtInt(decode)), h("td", { class: "num" }, fmtInt(prompt)), h("td", { class: "num" }, String(requests)), h("td", {})),
        ),
      ),
    );
  }
}
