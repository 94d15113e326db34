// Validates custom resources with the validators of the npm packages @kubernetes-models/*
// (generated from each project's published API schema). Input on stdin, JSON:
//   {"nodeModules": "<folder>", "documents": [{"id": "...", "doc": {...}}, ...]}
// Output on stdout, JSON: [{"id": "...", "error": null | "<what is wrong>"}, ...].
// A resource whose group has no package here is an error, never a pass.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const PACKAGES = {
  "keda.sh": "@kubernetes-models/keda",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
};

const input = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const { id, doc } of input.documents) {
  const [group, version] = String(doc.apiVersion ?? "").split("/");
  const pkg = PACKAGES[group];
  if (!pkg || !version) {
    results.push({ id, error: `no validator for apiVersion ${doc.apiVersion}` });
    continue;
  }
  const file = join(input.nodeModules, pkg, group, version, "index.js");
  let models;
  try {
    models = await import(pathToFileURL(file).href);
  } catch (err) {
    results.push({ id, error: `cannot load ${file}: ${err.message}` });
    continue;
  }
  const Model = models[doc.kind];
  if (typeof Model !== "function") {
    results.push({ id, error: `${pkg} has no kind ${doc.kind} in ${group}/${version}` });
    continue;
  }
  try {
    new Model(doc).validate();
    results.push({ id, error: null });
  } catch (err) {
    results.push({ id, error: err.message });
  }
}
process.stdout.write(JSON.stringify(results));
