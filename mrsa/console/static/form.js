// The submit form, built from the server's OpenAPI schema: one input per field of ParamOverrides
// (a group such as "sampling" is flattened: its fields are knobs of their own, nested again when
// sent), so a knob added to RSAParams shows up here without a console change.
import { ApiError, openapi, postJson } from "./api.js";
import { h } from "./dom.js";

function resolveRef(schema, node) {
  if (node && node.$ref) return schema.components.schemas[node.$ref.split("/").pop()];
  return node;
}

/** The non-null branch of an optional field (`anyOf: [X, {type: null}]`). */
function valueSchema(schema, prop) {
  const branches = prop.anyOf ? prop.anyOf.filter((b) => b.type !== "null") : [prop];
  return resolveRef(schema, branches[0] || {});
}

/** [{name, group, type, enum, minimum, maximum, description}] from ParamOverrides. */
export function knobsOf(schema) {
  const knobs = [];
  const walk = (model, group) => {
    for (const [name, prop] of Object.entries(model.properties || {})) {
      const value = valueSchema(schema, prop);
      if (value.properties) {
        walk(value, name);
        continue;
      }
      knobs.push({
        name,
        group,
        type: value.type || "string",
        enum: value.enum || null,
        minimum: value.minimum ?? value.exclusiveMinimum,
        maximum: value.maximum ?? value.exclusiveMaximum,
        description: prop.description || value.description || "",
      });
    }
  };
  walk(schema.components.schemas.ParamOverrides, null);
  return knobs;
}

function flatten(values, out = {}) {
  for (const [name, value] of Object.entries(values || {})) {
    if (value && typeof value === "object" && !Array.isArray(value)) flatten(value, out);
    else out[name] = value;
  }
  return out;
}

function presetInfo(schema) {
  const prop = schema.components.schemas.JobRequest.properties.preset;
  const names = (prop.enum || []).filter((n) => n !== null);
  const match = /\(default ([\w.-]+)\)/.exec(prop.description || "");
  const presets = {};
  for (const [name, values] of Object.entries(prop["x-presets"] || {})) presets[name] = flatten(values);
  return { names, presets, defaultName: match ? match[1] : null };
}

function parseValue(knob, text) {
  if (knob.type === "integer" || knob.type === "number") {
    return text.trim() !== "" && !Number.isNaN(Number(text)) ? Number(text) : text;
  }
  if (knob.type === "boolean") return text === "true";
  return text;
}

/** The field an API error (detail[].loc) is about: "problem", "preset", a knob name, or null. */
export function errorField(loc, knobNames) {
  const path = loc[0] === "body" ? loc.slice(1) : loc;
  if (path[0] === "problem" || path[0] === "preset") return path[0];
  if (path[0] === "params") {
    for (let i = path.length - 1; i > 0; i--) if (knobNames.has(String(path[i]))) return String(path[i]);
  }
  return null;
}

export class SubmitForm {
  constructor(container, onSubmitted) {
    this.onSubmitted = onSubmitted;
    this.form = h("form", { "data-testid": "submit-form", class: "submit-form", novalidate: true });
    container.append(this.form);
    this.build().catch((err) => this.form.append(h("p", { class: "error" }, `cannot load the form: ${err.message}`)));
  }

  async build() {
    const schema = await openapi();
    this.knobs = knobsOf(schema);
    this.knobNames = new Set(this.knobs.map((k) => k.name));
    this.presetInfo = presetInfo(schema);
    const problem = h("textarea", { name: "problem", rows: 3, required: true, placeholder: "What is 7*6?" });
    const preset = h(
      "select",
      { name: "preset", onchange: () => this.showPlaceholders() },
      h("option", { value: "" }, `default${this.presetInfo.defaultName ? ` (${this.presetInfo.defaultName})` : ""}`),
      this.presetInfo.names.map((n) => h("option", { value: n }, n)),
    );
    this.inputs = new Map();
    const knobCells = this.knobs.map((knob) => {
      const input = knob.enum
        ? h("select", { "data-knob": knob.name }, h("option", { value: "" }, "—"), knob.enum.map((v) => h("option", { value: v }, v)))
        : knob.type === "boolean"
          ? h("select", { "data-knob": knob.name }, h("option", { value: "" }, "—"), h("option", { value: "true" }, "true"), h("option", { value: "false" }, "false"))
          : h("input", { type: "text", "data-knob": knob.name, inputmode: knob.type === "string" ? null : "decimal", autocomplete: "off" });
      const range =
        knob.minimum !== undefined || knob.maximum !== undefined ? ` (${knob.minimum ?? "…"} – ${knob.maximum ?? "…"})` : "";
      input.title = knob.description + range;
      this.inputs.set(knob.name, input);
      return h(
        "label",
        { class: "knob", title: input.title },
        h("span", { class: "knob-name" }, knob.name),
        input,
        h("span", { class: "field-error", "data-error-for": knob.name }),
      );
    });
    this.formError = h("p", { class: "error form-error" });
    this.button = h("button", { type: "submit", "data-testid": "submit-button" }, "Submit");
    this.form.append(
      h("h2", {}, "New job"),
      h("label", { class: "problem" }, h("span", {}, "Problem"), problem, h("span", { class: "field-error", "data-error-for": "problem" })),
      h("div", { class: "row" },
        h("label", {}, h("span", {}, "Preset"), preset, h("span", { class: "field-error", "data-error-for": "preset" })),
        h("span", { class: "muted" }, "Blank fields keep the preset's value (shown greyed)."),
      ),
      h("details", { class: "knobs", open: true }, h("summary", {}, "Parameters"), h("div", { class: "knob-grid" }, knobCells)),
      this.formError,
      h("div", { class: "actions" }, this.button),
    );
    this.problem = problem;
    this.preset = preset;
    this.showPlaceholders();
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
  }

  showPlaceholders() {
    const name = this.preset.value || this.presetInfo.defaultName;
    const values = this.presetInfo.presets[name] || {};
    for (const [knob, input] of this.inputs) {
      if (input.tagName === "INPUT") input.placeholder = values[knob] !== undefined ? String(values[knob]) : "";
    }
  }

  body() {
    const params = {};
    for (const knob of this.knobs) {
      const text = this.inputs.get(knob.name).value;
      if (text === "") continue;
      const target = knob.group ? (params[knob.group] ||= {}) : params;
      target[knob.name] = parseValue(knob, text);
    }
    const body = { problem: this.problem.value, params };
    if (this.preset.value) body.preset = this.preset.value;
    return body;
  }

  clearErrors() {
    for (const el of this.form.querySelectorAll("[data-error-for]")) el.textContent = "";
    this.formError.textContent = "";
  }

  async submit() {
    this.clearErrors();
    this.button.disabled = true;
    try {
      const done = await postJson("/v1/jobs", this.body());
      this.onSubmitted(done.id);
    } catch (err) {
      this.showError(err);
    } finally {
      this.button.disabled = false;
    }
  }

  showError(err) {
    if (!(err instanceof ApiError)) {
      this.formError.textContent = String(err.message || err);
      return;
    }
    const fields = err.body.detail || [];
    const unplaced = [];
    for (const field of fields) {
      const name = errorField(field.loc || [], this.knobNames);
      const slot = name && this.form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
      if (slot) slot.textContent = slot.textContent ? `${slot.textContent}; ${field.msg}` : field.msg;
      else unplaced.push(field.msg);
    }
    if (!fields.length || unplaced.length) this.formError.textContent = unplaced.join("; ") || err.message;
  }
}
