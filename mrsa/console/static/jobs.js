// The jobs page: the submit form and the caller's jobs, polled while the page is open.
import { getJson, postJson } from "./api.js";
import { fmtAge, fmtInt, h, TERMINAL } from "./dom.js";
import { SubmitForm } from "./form.js";

const POLL_MS = 2000;
const LIST_LIMIT = 50;

export function progressText(job) {
  const p = job.progress;
  const round = Math.min(p.round, p.rounds);
  const done = job.status === "succeeded" ? p.population : p.done;
  return `round ${round}/${p.rounds} · ${done ?? "–"}/${p.population}`;
}

export class JobsPage {
  constructor(root) {
    this.root = root;
    this.rows = new Map(); // job id -> {tr, cells}
    this.tokens = new Map(); // job id -> decode tokens of an ended job (immutable: fetched once)
    this.closed = false;
    new SubmitForm(root, (id) => {
      location.hash = `#/jobs/${encodeURIComponent(id)}`;
    });
    this.status = h("p", { class: "muted" });
    this.tbody = h("tbody");
    this.table = h(
      "table",
      { "data-testid": "jobs-table", class: "jobs" },
      h("thead", {}, h("tr", {}, ["job", "status", "preset", "progress", "decode tokens", "answer", "age", ""].map((t) => h("th", {}, t)))),
      this.tbody,
    );
    root.append(h("h2", {}, "Jobs"), this.status, this.table);
    this.poll();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
  }

  async poll() {
    if (this.closed) return;
    try {
      const list = await getJson(`/v1/jobs?limit=${LIST_LIMIT}`);
      // A job's own view has its round's candidates done: ask for the active ones only.
      const jobs = await Promise.all(
        list.jobs.map((job) => (TERMINAL.has(job.status) ? job : getJson(`/v1/jobs/${job.id}`).catch(() => job))),
      );
      this.render(jobs);
      this.status.textContent = jobs.length ? "" : "No jobs yet: submit one above.";
    } catch (err) {
      this.status.textContent = `cannot list jobs: ${err.message}`;
    }
    if (!this.closed) this.timer = setTimeout(() => this.poll(), POLL_MS);
  }

  render(jobs) {
    const seen = new Set();
    jobs.forEach((job, position) => {
      seen.add(job.id);
      let row = this.rows.get(job.id);
      if (!row) {
        row = this.newRow(job);
        this.rows.set(job.id, row);
      }
      if (this.tbody.children[position] !== row.tr) this.tbody.insertBefore(row.tr, this.tbody.children[position] || null);
      this.fill(row, job);
    });
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        this.rows.delete(id);
      }
    }
  }

  newRow(job) {
    const cells = {};
    for (const field of ["status", "preset", "progress", "tokens", "answer", "age"]) {
      cells[field] = h("td", { "data-field": field });
    }
    const cancel = h("button", { type: "button", "data-action": "cancel", class: "small" }, "Cancel");
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      try {
        await postJson(`/v1/jobs/${job.id}/cancel`, {});
      } catch (err) {
        this.status.textContent = `cannot cancel ${job.id}: ${err.message}`;
        cancel.disabled = false;
      }
    });
    const link = h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, class: "mono" }, job.id);
    const preview = h("div", { class: "preview" }, job.problem_preview);
    const tr = h(
      "tr",
      { "data-job-id": job.id },
      h("td", {}, link, preview),
      cells.status,
      cells.preset,
      cells.progress,
      cells.tokens,
      cells.answer,
      cells.age,
      h("td", {}, cancel),
    );
    return { tr, cells, cancel };
  }

  fill(row, job) {
    const { cells } = row;
    cells.status.textContent = job.status;
    cells.status.className = `status status-${job.status}`;
    cells.preset.textContent = job.preset || "—";
    cells.progress.textContent = progressText(job);
    cells.answer.textContent = job.answer ?? (job.error ? "—" : "");
    cells.answer.title = job.error || "";
    cells.age.textContent = fmtAge(Date.now() / 1000 - job.created_at);
    const terminal = TERMINAL.has(job.status);
    if (terminal) row.cancel.remove(); // only a job that has not ended can be cancelled
    if (terminal) this.fillTokens(job, cells.tokens);
    else cells.tokens.textContent = "…";
  }

  async fillTokens(job, cell) {
    if (!this.tokens.has(job.id)) {
      this.tokens.set(job.id, null);
      try {
        const result = await getJson(`/v1/jobs/${job.id}/result`);
        this.tokens.set(job.id, result.usage.decode_tokens);
      } catch {
        this.tokens.delete(job.id);
      }
    }
    const tokens = this.tokens.get(job.id);
    cell.textContent = tokens === null || tokens === undefined ? "…" : fmtInt(tokens);
  }
}
