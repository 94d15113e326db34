// The console's entry: hash routes, the API key dialog and the header.
import { forgetKey, getKey, onKeyNeeded, setKey } from "./api.js";
import { clear, h } from "./dom.js";
import { JobPage } from "./job.js";
import { JobsPage } from "./jobs.js";
import { ReportsPage } from "./reports.js";

const view = document.getElementById("view");
const dialog = document.getElementById("key-dialog");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("key-input");
const keyError = document.getElementById("key-error");
const keyState = document.getElementById("key-state");
let resolveKey = null;

function showKeyState() {
  keyState.textContent = getKey() ? "key set for this tab" : "";
}

onKeyNeeded((message) => {
  keyError.textContent = getKey() ? message || "invalid API key" : "";
  keyInput.value = "";
  if (!dialog.open) dialog.showModal();
  keyInput.focus();
  return new Promise((resolve) => {
    resolveKey = resolve;
  });
});

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (!key) return;
  setKey(key);
  showKeyState();
  dialog.close();
  if (resolveKey) resolveKey(true);
  resolveKey = null;
});

dialog.addEventListener("cancel", (event) => event.preventDefault()); // Esc: the page needs a key

document.getElementById("key-forget").addEventListener("click", () => {
  forgetKey();
  showKeyState();
  if (current) current.page.close(); // reload the page: its next data call asks for a key
  current = null;
  route();
});

// -- routes -------------------------------------------------------------------------------------

let current = null; // {name, page}

function parse(hash) {
  const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "reports") return { name: "reports", report: parts[1] || null };
  if (parts[0] === "jobs" && parts[1]) {
    const candidate =
      parts[2] === "c" && parts.length >= 5 ? { round: Number(parts[3]), index: Number(parts[4]) } : null;
    return { name: "job", jobId: parts[1], candidate };
  }
  return { name: "jobs" };
}

function route() {
  if (!location.hash) history.replaceState(null, "", "#/jobs"); // the default page, addressable
  const target = parse(location.hash);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === (target.name === "job" ? "jobs" : target.name));
  }
  const key = target.name === "job" ? `job:${target.jobId}` : target.name;
  if (current && current.key === key && current.page.update) {
    current.page.update(target);
    return;
  }
  if (current) current.page.close();
  clear(view);
  const page =
    target.name === "job"
      ? new JobPage(view, target)
      : target.name === "reports"
        ? new ReportsPage(view, target)
        : new JobsPage(view);
  current = { key, page };
}

window.addEventListener("hashchange", route);
window.addEventListener("error", (event) => {
  view.prepend(h("p", { class: "error" }, `console error: ${event.message}`));
});
showKeyState();
route();
