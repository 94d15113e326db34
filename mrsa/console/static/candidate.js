// The candidate panel: the exact prompt the candidate answered (problem, its K parents' tails,
// the template), its reasoning (collapsed), content, answer, finish reason, tokens, and the tail
// carried forward to the next round. Every model text is set with textContent.
import { getJson } from "./api.js";
import { clear, fmtInt, h } from "./dom.js";

function link(jobId, round, index, testid) {
  return h(
    "a",
    { href: `#/jobs/${encodeURIComponent(jobId)}/c/${round}/${index}`, "data-testid": testid, "data-round": round, "data-index": index, class: "chip" },
    `#${index}`,
  );
}

export class CandidatePanel {
  constructor(container, jobId, closeHref) {
    this.jobId = jobId;
    this.el = h("aside", { "data-testid": "candidate-panel", class: "candidate-panel", hidden: true });
    this.closeHref = closeHref;
    container.append(this.el);
    this.token = 0;
  }

  hide() {
    this.el.hidden = true;
    clear(this.el);
  }

  async show(round, index, children) {
    const token = ++this.token;
    this.el.hidden = false;
    clear(this.el).append(h("p", { class: "muted" }, `Loading round ${round} · #${index}…`));
    let cand;
    try {
      cand = await getJson(`/v1/jobs/${encodeURIComponent(this.jobId)}/rounds/${round}/candidates/${index}`);
    } catch (err) {
      if (token === this.token) clear(this.el).append(this.header(round, index), h("p", { class: "error" }, err.message));
      return;
    }
    if (token !== this.token) return;
    const finish = cand.finish_reason;
    const u = cand.usage;
    clear(this.el).append(
      this.header(round, index),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "answer"),
        h(
          "dd",
          {},
          h("span", { "data-testid": "candidate-answer", class: "mono" }, cand.answer ?? ""),
          cand.answer == null ? h("span", { class: "muted" }, "none") : null,
        ),
        h("dt", {}, "finish"),
        h("dd", { "data-testid": "candidate-finish" }, finish),
        h("dt", {}, "tokens"),
        h(
          "dd",
          { "data-testid": "candidate-tokens" },
          `${fmtInt(u.decode_tokens)} decode · ${fmtInt(u.prompt_tokens)} prompt · ${u.requests} request(s) · ${cand.chunks} chunk(s)`,
        ),
        h("dt", {}, "parents"),
        h("dd", {}, cand.parents.length ? cand.parents.map((p) => link(this.jobId, round - 1, p, "candidate-parent")) : h("span", { class: "muted" }, "none (round 0)")),
        h("dt", {}, "children"),
        h("dd", {}, children.length ? children.map((c) => link(this.jobId, round + 1, c.index, "candidate-child")) : h("span", { class: "muted" }, "none yet")),
      ),
      h("h4", {}, "Prompt", h("span", { class: "muted" }, " — the exact text sent, with the parents' tails")),
      h("pre", { "data-testid": "candidate-prompt", class: "text" }, cand.prompt),
      h(
        "details",
        { "data-testid": "candidate-reasoning", class: "reasoning" },
        h("summary", {}, `Reasoning (${cand.reasoning ? cand.reasoning.length.toLocaleString("en-US") : 0} characters)`),
        h("pre", { class: "text" }, cand.reasoning ?? ""),
      ),
      h("h4", {}, "Content"),
      h("pre", { "data-testid": "candidate-content", class: "text" }, cand.content),
      h("h4", {}, "Tail carried forward", h("span", { class: "muted" }, ` — ${fmtInt(cand.tail_tokens)} of ${fmtInt(cand.source_tokens)} tokens`)),
      h("pre", { "data-testid": "candidate-tail", class: "text" }, cand.tail),
    );
  }

  header(round, index) {
    return h(
      "div",
      { class: "panel-head" },
      h("h3", {}, `Round ${round} · candidate #${index}`),
      h("a", { href: this.closeHref, class: "close", "aria-label": "close", "data-testid": "candidate-close" }, "×"),
    );
  }
}
