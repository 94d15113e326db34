// Vote bars: answer -> count, in the answers' lineage colours.
import { answerColor } from "./colors.js";
import { h } from "./dom.js";

/** Bars of `votes` ([{answer, count, finished}]) out of `total` candidates. */
export function voteBars(votes, total) {
  const list = h("ol", { class: "vote-bars" });
  const counted = votes.reduce((sum, v) => sum + v.count, 0);
  const rows = [...votes];
  if (total > counted) rows.push({ answer: null, count: total - counted, finished: 0 });
  for (const vote of rows) {
    const bar = h("span", { class: "bar" });
    bar.style.width = `${total ? (100 * vote.count) / total : 0}%`; // CSSOM: allowed under the CSP
    bar.style.background = answerColor(vote.answer);
    list.append(
      h(
        "li",
        { "data-answer": vote.answer ?? "", title: vote.answer === null ? "no answer" : `${vote.answer}: ${vote.count} (${vote.finished} finished)` },
        h("span", { class: "vote-answer" + (vote.answer === null ? " muted" : "") }, vote.answer ?? "no answer"),
        h("span", { class: "bar-track" }, bar),
        h("span", { class: "vote-count", "data-count": vote.count }, String(vote.count)),
      ),
    );
  }
  return list;
}
