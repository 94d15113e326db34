// The lineage graph: rounds as columns, candidates as nodes (colour = extracted answer, outline
// solid = finished, dashed = truncated, size = decode tokens), an edge from each candidate to the
// K parents whose tails were in its prompt. Sizes follow N and the number of columns, so N=32 and
// T=8 still fit a laptop screen; edges are thin and light until a node is selected, which draws
// the edges to its parents and children strongly and fades the rest.
import { answerColor } from "./colors.js";
import { clear, s } from "./dom.js";

const HEADER = 26;
const FOOTER = 8;

function clamp(x, lo, hi) {
  return Math.min(hi, Math.max(lo, x));
}

export class Lineage {
  /**
   * @param svg the <svg data-testid=lineage> element
   * @param shape {stages, population, budget, selectRound (null unless selection "aggregate")}
   * @param onSelect (round, index) => void, when a node is clicked
   */
  constructor(svg, shape, onSelect) {
    this.svg = svg;
    this.shape = shape;
    this.onSelect = onSelect;
    this.nodes = new Map(); // "r:i" -> {round, index, answer, finish, decode, parents}
    this.selected = null;
    this.pending = false;
    this.layout();
    // Re-laid out in the next frame, not in the observer's callback: resizing the SVG there would
    // resize the observed box again in the same frame (Chromium reports "ResizeObserver loop").
    this.resize = new ResizeObserver(() => requestAnimationFrame(() => this.relayout()));
    if (svg.parentElement) this.resize.observe(svg.parentElement);
  }

  close() {
    this.resize.disconnect();
  }

  relayout() {
    const before = this.width;
    this.layout();
    if (Math.abs(this.width - before) > 1) this.schedule();
  }

  /** Sizes in CSS pixels (the SVG is drawn 1:1): columns share the container's width, rows share
   * about 60% of the window's height, within limits that keep nodes clickable. */
  layout() {
    const { stages, population, selectRound } = this.shape;
    const width = Math.max(320, (this.svg.parentElement && this.svg.parentElement.clientWidth) || 1000);
    const room = Math.max(220, window.innerHeight * 0.6) - HEADER - FOOTER;
    this.columns = stages + (selectRound === null ? 0 : 1);
    this.width = width;
    this.colWidth = width / this.columns;
    this.rowHeight = clamp(room / population, 12, 44);
    this.height = HEADER + population * this.rowHeight + FOOTER;
    this.maxRadius = Math.min(this.rowHeight * 0.42, this.colWidth * 0.16);
    this.minRadius = Math.max(2.5, this.maxRadius * 0.35);
    this.svg.setAttribute("viewBox", `0 0 ${width.toFixed(0)} ${this.height.toFixed(0)}`);
    this.svg.setAttribute("width", width.toFixed(0));
    this.svg.setAttribute("height", this.height.toFixed(0));
  }

  /** Rows of a column: N for a round, 1 for the final aggregation. */
  rows(round) {
    return round === this.shape.selectRound ? 1 : this.shape.population;
  }

  x(round) {
    return this.colWidth * (round + 0.5);
  }

  y(round, index) {
    if (round === this.shape.selectRound) return HEADER + (this.shape.population * this.rowHeight) / 2;
    return HEADER + this.rowHeight * (index + 0.5);
  }

  radius(node) {
    const share = Math.sqrt(clamp((node.decode || 0) / Math.max(1, this.shape.budget), 0, 1));
    return this.minRadius + (this.maxRadius - this.minRadius) * share;
  }

  has(round, index) {
    return this.nodes.has(`${round}:${index}`);
  }

  get(round, index) {
    return this.nodes.get(`${round}:${index}`) || null;
  }

  /** Add or update a candidate (from a round summary or a candidate event). */
  setNode(node) {
    this.nodes.set(`${node.round}:${node.index}`, node);
    this.schedule();
  }

  children(round, index) {
    const out = [];
    for (const node of this.nodes.values()) {
      if (node.round === round + 1 && (node.parents || []).includes(index)) out.push(node);
    }
    return out.sort((a, b) => a.index - b.index);
  }

  select(round, index) {
    this.selected = round === null ? null : { round, index };
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
    });
  }

  columnLabel(round) {
    return round === this.shape.selectRound ? "final aggregation" : `round ${round}`;
  }

  isRelated(node) {
    const sel = this.selected;
    if (!sel) return false;
    if (node.round === sel.round && node.index === sel.index) return true;
    const chosen = this.get(sel.round, sel.index);
    if (node.round === sel.round - 1 && chosen && (chosen.parents || []).includes(node.index)) return true;
    return node.round === sel.round + 1 && (node.parents || []).includes(sel.index);
  }

  render() {
    clear(this.svg);
    const sel = this.selected;
    const dense = this.shape.population * this.columns > 120;
    const edges = s("g", { class: `edges${sel ? " dimmed" : ""}${dense ? " dense" : ""}` });
    const highlighted = s("g", { class: "edges-highlighted" });
    const columns = [];
    for (let round = 0; round < this.columns; round++) {
      const col = s(
        "g",
        { "data-testid": "round-column", "data-round": round, class: "round-column" },
        s("text", { x: this.x(round), y: 16, class: "column-label", "text-anchor": "middle" }, this.columnLabel(round)),
      );
      for (let index = 0; index < this.rows(round); index++) {
        if (!this.has(round, index)) {
          col.append(s("circle", { cx: this.x(round), cy: this.y(round, index), r: this.minRadius, class: "slot" }));
        }
      }
      columns.push(col);
    }
    const ordered = [...this.nodes.values()].sort((a, b) => a.round - b.round || a.index - b.index);
    for (const node of ordered) {
      const col = columns[node.round];
      if (!col) continue;
      const cx = this.x(node.round);
      const cy = this.y(node.round, node.index);
      const r = this.radius(node);
      for (const parent of node.parents || []) {
        const px = this.x(node.round - 1);
        const py = this.y(node.round - 1, parent);
        const mid = (px + cx) / 2;
        const intoSelected = sel && node.round === sel.round && node.index === sel.index;
        const fromSelected = sel && node.round === sel.round + 1 && parent === sel.index;
        const isHl = intoSelected || fromSelected;
        const path = s("path", {
          d: `M${px.toFixed(1)},${py.toFixed(1)} C${mid.toFixed(1)},${py.toFixed(1)} ${mid.toFixed(1)},${cy.toFixed(1)} ${cx.toFixed(1)},${cy.toFixed(1)}`,
          class: intoSelected ? "edge hl-parent" : fromSelected ? "edge hl-child" : "edge",
          "data-testid": "edge",
          "data-from-round": node.round - 1,
          "data-from-index": parent,
          "data-to-round": node.round,
          "data-to-index": node.index,
        });
        (isHl ? highlighted : edges).append(path);
      }
      const finish = node.finish || "stop";
      const classes = ["node", `finish-${finish}`];
      if (sel) classes.push(this.isRelated(node) ? "related" : "faded");
      if (sel && node.round === sel.round && node.index === sel.index) classes.push("selected");
      const circle = s(
        "circle",
        {
          cx,
          cy,
          r: r.toFixed(2),
          fill: answerColor(node.answer),
          class: classes.join(" "),
          "data-testid": "node",
          "data-round": node.round,
          "data-index": node.index,
          "data-answer": node.answer ?? "",
          "data-finish": finish,
          "data-decode-tokens": node.decode ?? 0,
          tabindex: 0,
          role: "button",
          "aria-label": `round ${node.round} candidate ${node.index}`,
        },
        s(
          "title",
          {},
          `round ${node.round} · #${node.index}\nanswer: ${node.answer ?? "none"}\n` +
            `${finish === "length" ? "truncated (budget reached)" : finish === "stop" ? "finished" : finish}\n` +
            `${node.decode ?? 0} decode tokens` +
            (node.parents && node.parents.length ? `\nparents: ${node.parents.join(", ")}` : ""),
        ),
      );
      const open = () => this.onSelect(node.round, node.index);
      circle.addEventListener("click", open);
      circle.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") open();
      });
      col.append(circle);
      if (this.rowHeight >= 24) {
        col.append(
          s("text", { x: (cx + this.maxRadius + 3).toFixed(1), y: (cy + 3.5).toFixed(1), class: "node-label" }, String(node.decode ?? 0)),
        );
      }
    }
    this.svg.append(edges, highlighted, ...columns);
  }
}
