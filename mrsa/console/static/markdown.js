// The subset of Markdown `mrsa report` writes (headings, lists, tables, images, paragraphs,
// **bold** and `code`) turned into DOM nodes. Text only ever becomes text nodes; images are
// resolved by the caller (fetched with the key, shown from a blob: URL).
import { h } from "./dom.js";

const IMAGE = /^!\[([^\]]*)\]\(([^)\s]+)\)\s*$/;

/** Inline **bold** and `code` spans as nodes. */
export function inline(text) {
  const out = [];
  const pattern = /(\*\*[^*]+\*\*|`[^`]+`)/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    if (match.index > last) out.push(text.slice(last, match.index));
    const token = match[0];
    out.push(token.startsWith("**") ? h("strong", {}, token.slice(2, -2)) : h("code", {}, token.slice(1, -1)));
    last = match.index + token.length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function cells(line) {
  return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
}

/** Markdown text -> an array of block elements; image(src, alt) makes the <img> for a plot. */
export function renderMarkdown(text, image) {
  const blocks = [];
  const lines = text.split(/\r?\n/);
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i++;
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    const img = IMAGE.exec(line.trim());
    if (heading) {
      blocks.push(h(`h${Math.min(6, heading[1].length + 1)}`, {}, inline(heading[2])));
      i++;
    } else if (img) {
      blocks.push(h("figure", {}, image(img[2], img[1]), h("figcaption", {}, img[1])));
      i++;
    } else if (line.trim().startsWith("|")) {
      const rows = [];
      while (i < lines.length && lines[i].trim().startsWith("|")) rows.push(lines[i++]);
      const [head, rule, ...body] = rows;
      const align = rule ? cells(rule).map((c) => (c.endsWith(":") ? "num" : "")) : [];
      blocks.push(
        h(
          "table",
          { class: "report-table" },
          h("thead", {}, h("tr", {}, cells(head).map((c) => h("th", {}, inline(c))))),
          h("tbody", {}, body.map((row) => h("tr", {}, cells(row).map((c, k) => h("td", { class: align[k] || null }, inline(c)))))),
        ),
      );
    } else if (/^\s*[-*]\s+/.test(line)) {
      const items = [];
      while (i < lines.length && /^\s*[-*]\s+/.test(lines[i])) items.push(lines[i++].replace(/^\s*[-*]\s+/, ""));
      blocks.push(h("ul", {}, items.map((item) => h("li", {}, inline(item)))));
    } else {
      const para = [];
      while (i < lines.length && lines[i].trim() && !/^(#|\||!\[|\s*[-*]\s)/.test(lines[i])) para.push(lines[i++]);
      if (!para.length) para.push(lines[i++]);
      blocks.push(h("p", {}, inline(para.join(" "))));
    }
  }
  return blocks;
}
