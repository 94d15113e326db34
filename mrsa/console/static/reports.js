// The reports page: the sweep run folders the server can see, and one report's tables and plots.
import { ApiError, blobUrl, getJson } from "./api.js";
import { clear, fmtAge, h } from "./dom.js";
import { inline, renderMarkdown } from "./markdown.js";

export class ReportsPage {
  constructor(root, target) {
    this.root = root;
    this.abort = new AbortController();
    this.urls = [];
    this.list = h("ul", { "data-testid": "reports-list", class: "reports-list" });
    this.view = h("div", { class: "report-holder" });
    this.note = h("p", { class: "muted" });
    root.append(h("h2", {}, "Sweep reports"), this.note, h("div", { class: "reports" }, this.list, this.view));
    this.loadList().then(() => this.update(target));
  }

  close() {
    this.abort.abort();
    this.revoke();
  }

  revoke() {
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
  }

  async loadList() {
    try {
      const data = await getJson("/v1/reports", { signal: this.abort.signal });
      const note = !data.configured
        ? "This server has no reports folder: start it with `mrsa serve --reports-dir DIR` (or MRSA_REPORTS_DIR) to show the run folders of `mrsa bench --out DIR/NAME` here."
        : data.reports.length
          ? "Run folders under the server's reports folder; run `mrsa report` on one to get its tables and plots."
          : "The reports folder holds no run folder yet.";
      clear(this.note).append(...inline(note));
      clear(this.list).append(
        ...data.reports.map((r) =>
          h(
            "li",
            { "data-testid": "report", "data-name": r.name },
            h("a", { href: `#/reports/${encodeURIComponent(r.name)}` }, r.name),
            h("span", { class: "muted" }, ` ${r.model ?? "model unknown"} · ${r.configs.join(", ") || "no configuration"} · ${fmtAge(Date.now() / 1000 - r.modified_at)} ago${r.has_report ? "" : " · no report yet"}`),
            r.error ? h("span", { class: "error" }, ` ${r.error}`) : null,
          ),
        ),
      );
    } catch (err) {
      this.note.textContent = `cannot list reports: ${err.message}`;
    }
  }

  update(target) {
    for (const li of this.list.children) li.classList.toggle("active", li.dataset.name === target.report);
    if (target.report) this.show(target.report);
    else clear(this.view);
  }

  image(name) {
    return (src, alt) => {
      const img = h("img", { alt, class: "plot" });
      if (/^[A-Za-z0-9_.-]+$/.test(src)) {
        blobUrl(`/v1/reports/${encodeURIComponent(name)}/files/${encodeURIComponent(src)}`, { signal: this.abort.signal })
          .then((url) => {
            this.urls.push(url);
            img.src = url;
          })
          .catch((err) => img.replaceWith(h("p", { class: "error" }, `${src}: ${err.message}`)));
      }
      return img;
    };
  }

  async show(name) {
    this.revoke();
    clear(this.view).append(h("p", { class: "muted" }, `Loading ${name}…`));
    let report;
    try {
      report = await getJson(`/v1/reports/${encodeURIComponent(name)}`, { signal: this.abort.signal });
    } catch (err) {
      clear(this.view).append(h("p", { class: "error" }, err instanceof ApiError && err.status === 404 ? `No report ${name}.` : err.message));
      return;
    }
    const files = h(
      "p",
      { class: "files" },
      "Files: ",
      report.files.map((f) => h("button", { type: "button", class: "link", onclick: () => this.download(f) }, f.name)),
    );
    const body = report.markdown
      ? renderMarkdown(report.markdown, this.image(name))
      : [h("p", { class: "muted" }, "No report.md yet: run `mrsa report` on this run folder.")];
    clear(this.view).append(h("article", { "data-testid": "report-view", "data-name": name, class: "report-view" }, files, ...body));
  }

  async download(file) {
    const url = await blobUrl(file.url);
    this.urls.push(url);
    const a = h("a", { href: url, download: file.name });
    document.body.append(a);
    a.click();
    a.remove();
  }
}
