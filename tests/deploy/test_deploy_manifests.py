"""The Kubernetes manifests of ``deploy/``, validated without a cluster:

* every built-in resource against the Kubernetes OpenAPI schemas (PyPI ``kubernetes-validate``,
  strict: an unknown field fails);
* every custom resource against its project's schema: KEDA, the Prometheus Operator and the
  Gateway API with the npm ``@kubernetes-models/*`` validators, InferencePool with the schema in
  ``tests/deploy_schemas`` (where each comes from: ``tests/deploy_schemas/README.md``);
* checkov's Kubernetes checks, with zero failures and a written reason for every suppression;
* what mrsa itself relies on: the settings the manifests set are mrsa settings with valid
  values, the KEDA trigger reads mrsa's task stream and consumer group, the worker's termination
  grace covers its drain, the probes hit the ports that serve them.

The validators come from ``make deploy-validators`` (tests/deploy_tools.py); if one cannot run,
these tests fail with its error, they never skip.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from mrsa.cli.settings import Settings
from mrsa.env import env_name
from mrsa.servers.server_process import free_port
from mrsa.store.opening import open_store
from mrsa.store.redis import GROUP, RedisStore, task_stream
from tests.deploy_tools import ensure_checkov, ensure_npm_models
from tests.plugins.redis_server import RedisServer
from tests.store_contract import make_job, tasks_of
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = Path(__file__).parents[1] / "deploy_schemas"
KUBERNETES_VERSION = "1.30"
# Custom resources and what validates them.
NPM_VALIDATED_GROUPS = ("keda.sh", "monitoring.coreos.com", "gateway.networking.k8s.io")
INFERENCE_POOL = "inference.networking.k8s.io/v1"
# Time a stopping worker needs beyond its drain: the release (one Redis round trip, with the
# store's socket timeout as its worst case) and the process' exit.
DRAIN_MARGIN_S = 15
# The redis-streams / redis-sentinel-streams scalers' parameters (KEDA 2.12+ documentation).
REDIS_STREAMS_PARAMETERS = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv",
    "addresses", "addressesFromEnv", "hosts", "hostsFromEnv", "ports", "portsFromEnv",
    "sentinelMaster", "sentinelMasterFromEnv", "sentinelUsernameFromEnv", "sentinelPasswordFromEnv",
    "usernameFromEnv", "passwordFromEnv", "databaseIndex", "enableTLS", "unsafeSsl",
    "stream", "consumerGroup", "pendingEntriesCount", "streamLength", "lagCount", "activationLagCount",
}  # fmt: skip

pytestmark = pytest.mark.timeout(300)


@dataclass(frozen=True)
class Manifest:
    path: Path
    index: int
    doc: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}#{self.index}"

    @property
    def group(self) -> str:
        api_version = str(self.doc.get("apiVersion", ""))
        return api_version.split("/")[0] if "/" in api_version else ""


def manifest_files() -> list[Path]:
    """Every YAML file of deploy/ that kubectl applies (not kustomize's own files, not Helm values)."""
    return sorted(
        p
        for p in DEPLOY.rglob("*.yaml")
        if p.name != "kustomization.yaml" and not p.name.endswith(".values.yaml")
    )


def load_manifests() -> list[Manifest]:
    out = []
    for path in manifest_files():
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            assert isinstance(doc, dict), f"{path}: document {index} is not a mapping"
            out.append(Manifest(path, index, doc))
    return out


MANIFESTS = load_manifests()


def kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


def of_kind(kind: str) -> list[Manifest]:
    return [m for m in MANIFESTS if m.doc.get("kind") == kind]


def is_builtin(m: Manifest) -> bool:
    return m.group not in NPM_VALIDATED_GROUPS and m.doc.get("apiVersion") != INFERENCE_POOL


def config_literals() -> Iterator[tuple[Path, str, str]]:
    """(kustomization, name, value) of every configMapGenerator literal."""
    for kustomization in kustomizations():
        spec = yaml.safe_load(kustomization.read_text())
        for generator in spec.get("configMapGenerator", []):
            for literal in generator.get("literals", []):
                name, _, value = literal.partition("=")
                yield kustomization, name, value


def base_config() -> dict[str, str]:
    return {name: value for k, name, value in config_literals() if k.parent == DEPLOY / "base"}


def containers(m: Manifest) -> list[dict[str, Any]]:
    pod = m.doc["spec"]["template"]["spec"]
    return list(pod.get("initContainers", [])) + list(pod["containers"])


# -- structure ------------------------------------------------------------------------------------


def test_every_manifest_is_part_of_a_kustomization() -> None:
    """Each kustomization's resources and components exist and are what kustomize accepts there
    (a file inside the kustomization's folder, a Kustomization folder as a resource, a Component
    folder as a component), and no manifest file is left out."""
    referenced: set[Path] = set()
    for kustomization in kustomizations():
        spec = yaml.safe_load(kustomization.read_text())
        where = kustomization.relative_to(ROOT)
        for field, kind in (("resources", "Kustomization"), ("components", "Component")):
            for entry in spec.get(field, []):
                target = (kustomization.parent / entry).resolve()
                assert target.exists(), f"{where}: {entry} does not exist"
                if target.is_dir():
                    inner = yaml.safe_load((target / "kustomization.yaml").read_text())
                    assert inner["kind"] == kind, f"{where}: {field} entry {entry} is a {inner['kind']}"
                else:
                    # kustomize's default load restriction: files from the kustomization's own tree.
                    assert field == "resources", f"{where}: component {entry} is not a folder"
                    assert kustomization.parent.resolve() in target.parents, f"{where}: {entry} is outside"
                    referenced.add(target)
    missing = [str(p.relative_to(ROOT)) for p in manifest_files() if p.resolve() not in referenced]
    assert not missing, f"manifests no kustomization applies: {missing}"


def test_merged_config_maps_exist_in_what_the_example_builds_on() -> None:
    """An example's `behavior: merge` generator must find a generator of that name in the
    kustomizations it includes (kustomize fails otherwise; the literals' names and values are
    checked as mrsa settings below)."""
    for kustomization in kustomizations():
        spec = yaml.safe_load(kustomization.read_text())
        merged = [g for g in spec.get("configMapGenerator", []) if g.get("behavior") == "merge"]
        if not merged:
            continue
        included = [
            yaml.safe_load((kustomization.parent / entry / "kustomization.yaml").read_text())
            for entry in spec.get("resources", [])
            if (kustomization.parent / entry).is_dir()
        ]
        names = {g["name"] for inner in included for g in inner.get("configMapGenerator", [])}
        for generator in merged:
            assert generator["name"] in names, (
                f"{kustomization.relative_to(ROOT)}: merges {generator['name']}"
            )


def test_every_manifest_names_its_namespace() -> None:
    """Nothing lands in `default` by accident (a kustomization's `namespace:` covers only its own)."""
    for m in MANIFESTS:
        if m.doc["kind"] == "Namespace":
            continue
        assert m.doc["metadata"].get("namespace"), f"{m.id}: no metadata.namespace"


# -- schemas --------------------------------------------------------------------------------------


def kubernetes_errors(doc: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{'.'.join(str(p) for p in exc.path)}: {exc.message}"
    return None


def test_builtin_resources_match_the_kubernetes_schemas() -> None:
    builtins = [m for m in MANIFESTS if is_builtin(m)]
    kinds = {m.doc["kind"] for m in builtins}
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler"} <= kinds
    assert {"PodDisruptionBudget", "NetworkPolicy", "PersistentVolumeClaim", "Namespace"} <= kinds
    errors = {m.id: e for m in builtins if (e := kubernetes_errors(m.doc))}
    assert not errors, json.dumps(errors, indent=2)


def npm_errors(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, str | None]:
    """Each document's error (None when valid) from tests/deploy_schemas/validate_crds.mjs."""
    node = shutil.which("node")
    assert node, "node is not installed (Debian: apt-get install nodejs); `make deploy-validators`"
    payload = {
        "nodeModules": str(ensure_npm_models()),
        "documents": [{"id": i, "doc": d} for i, d in docs],
    }
    result = subprocess.run(
        [node, str(SCHEMAS / "validate_crds.mjs")],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"validate_crds.mjs exited {result.returncode}:\n{result.stderr[-3000:]}"
    return {row["id"]: row["error"] for row in json.loads(result.stdout)}


def inference_pool_errors(doc: dict[str, Any]) -> str | None:
    schema = json.loads((SCHEMAS / "inferencepool-v1.schema.json").read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    return None if error is None else f"{'.'.join(str(p) for p in error.path)}: {error.message}"


def test_custom_resources_match_their_projects_schemas() -> None:
    custom = [m for m in MANIFESTS if m.group in NPM_VALIDATED_GROUPS]
    kinds = {m.doc["kind"] for m in custom}
    assert {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "Gateway", "HTTPRoute"} <= kinds
    errors = {k: v for k, v in npm_errors([(m.id, m.doc) for m in custom]).items() if v}
    pools = [m for m in MANIFESTS if m.doc.get("apiVersion") == INFERENCE_POOL]
    assert pools, "no InferencePool in deploy/"
    errors.update({m.id: e for m in pools if (e := inference_pool_errors(m.doc))})
    assert not errors, json.dumps(errors, indent=2)


def first(kind: str) -> dict[str, Any]:
    return copy.deepcopy(of_kind(kind)[0].doc)


def test_the_validators_reject_broken_resources() -> None:
    """Each validator is live: a broken copy of a real manifest fails it."""
    deployment = first("Deployment")
    deployment["spec"]["replicas"] = "two"
    assert kubernetes_errors(deployment)
    unknown_field = first("Deployment")
    unknown_field["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert kubernetes_errors(unknown_field)

    scaled = first("ScaledObject")
    scaled["spec"]["cooldownPeriod"] = "ten minutes"
    monitor = first("ServiceMonitor")
    monitor["spec"]["endpoints"] = "http"
    route = first("HTTPRoute")
    del route["spec"]["rules"][0]["backendRefs"][0]["name"]
    no_triggers = first("ScaledObject")
    del no_triggers["spec"]["triggers"]
    unknown_group = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"}}
    docs = {
        "scaled": scaled,
        "monitor": monitor,
        "route": route,
        "triggers": no_triggers,
        "other": unknown_group,
    }
    errors = npm_errors(list(docs.items()))
    assert all(errors[k] for k in docs), errors

    pool = first("InferencePool")
    del pool["spec"]["targetPorts"]
    assert inference_pool_errors(pool)
    typo = first("InferencePool")
    typo["spec"]["endpointPickerRef"]["portNumber"] = 9002
    assert inference_pool_errors(typo)


# -- checkov --------------------------------------------------------------------------------------


def test_checkov_finds_no_failed_check() -> None:
    checkov = ensure_checkov()
    result = subprocess.run(
        # --skip-download: no request to Prisma Cloud (the checks ship with checkov).
        [
            str(checkov),
            "--directory",
            str(DEPLOY),
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "BC_SKIP_MAPPING": "TRUE"},
    )
    assert result.stdout.strip(), (
        f"checkov printed nothing (exit {result.returncode}):\n{result.stderr[-3000:]}"
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    summary = {k: sum(r["summary"][k] for r in reports) for k in ("passed", "failed", "parsing_errors")}
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    assert summary["parsing_errors"] == 0, result.stdout[-3000:]
    assert summary["failed"] == 0, "\n".join(failed)
    assert summary["passed"] > 100, summary  # it did look at the manifests
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    unexplained = [
        f"{c['check_id']} {c['resource']}"
        for c in skipped
        if len(c["check_result"].get("suppress_comment", "")) < 20
    ]
    assert not unexplained, f"suppressions without a reason: {unexplained}"


# -- what mrsa relies on --------------------------------------------------------------------------


def test_configured_settings_are_mrsa_settings_with_valid_values() -> None:
    """Every MRSA_* the manifests set (config literals and pod env) names a Settings field, and the
    base configuration is a valid worker configuration."""
    fields = {env_name(f): f for f in Settings.model_fields}
    names = [(str(k.relative_to(ROOT)), n) for k, n, _ in config_literals()]
    for m in MANIFESTS:
        if m.doc["kind"] in ("Deployment", "StatefulSet"):
            names += [(m.id, e["name"]) for c in containers(m) for e in c.get("env", [])]
    unknown = [(where, n) for where, n in names if n.startswith("MRSA_") and n not in fields]
    assert not unknown, f"not mrsa settings: {unknown}"
    values = {fields[n]: v for n, v in base_config().items()}
    WorkerSettings(redis_url="redis://mrsa-redis:6379/0", **values)
    for kustomization, name, value in config_literals():
        try:
            Settings(**{fields[name]: value})
        except ValidationError as exc:
            pytest.fail(f"{kustomization.relative_to(ROOT)}: {name}={value}: {exc}")


def test_worker_termination_grace_covers_its_drain() -> None:
    (worker,) = [m for m in of_kind("Deployment") if m.doc["metadata"]["name"] == "mrsa-worker"]
    grace = float(base_config()[env_name("worker_shutdown_grace_s")])
    termination = worker.doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert termination >= grace + DRAIN_MARGIN_S, (termination, grace)


def test_probes_hit_the_ports_that_serve_them() -> None:
    """The worker's probes go to its health endpoints on MRSA_WORKER_METRICS_PORT; every named
    probe port exists."""
    metrics_port = int(base_config()[env_name("worker_metrics_port")])
    for m in of_kind("Deployment") + of_kind("StatefulSet"):
        for c in containers(m):
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                get = c.get(probe, {}).get("httpGet")
                if get and isinstance(get["port"], str):
                    assert get["port"] in ports, f"{m.id}: {probe} port {get['port']} is not a container port"
            if m.doc["metadata"]["name"] == "mrsa-worker":
                # workers/health.py: /healthz = the event loop turns, /readyz = taking tasks.
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    assert ports[c[probe]["httpGet"]["port"]] == metrics_port
                    assert c[probe]["httpGet"]["path"] == path


def test_keda_scales_the_workers_on_mrsa_task_stream() -> None:
    scaled = of_kind("ScaledObject")
    assert scaled
    prefix = base_config().get(env_name("redis_prefix"), Settings.model_fields["redis_prefix"].default)
    deployments = {m.doc["metadata"]["name"] for m in of_kind("Deployment")}
    auths = {m.doc["metadata"]["name"] for m in of_kind("TriggerAuthentication")}
    concurrency = int(base_config()[env_name("backend_concurrency")])
    for m in scaled:
        spec = m.doc["spec"]
        assert spec["scaleTargetRef"]["name"] == "mrsa-worker" in deployments
        scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert scale_down["stabilizationWindowSeconds"] >= 300, f"{m.id}: scale-down too quick"
        for trigger in spec["triggers"]:
            assert trigger["type"] in ("redis-streams", "redis-sentinel-streams"), m.id
            meta = trigger["metadata"]
            assert set(meta) <= REDIS_STREAMS_PARAMETERS, f"{m.id}: {set(meta) - REDIS_STREAMS_PARAMETERS}"
            assert meta["stream"] == task_stream(prefix), m.id
            assert meta["consumerGroup"] == GROUP, m.id
            # Stream length = tasks queued or in flight; one worker runs this many at once.
            assert int(meta["streamLength"]) == concurrency, f"{m.id}: streamLength != tasks per worker"
            assert trigger["authenticationRef"]["name"] in auths, m.id


def test_pods_run_hardened() -> None:
    """Non-root, read-only, no privilege escalation, no capabilities, seccomp, resources, and an
    image pinned by tag, for every container of every workload."""
    for m in of_kind("Deployment") + of_kind("StatefulSet"):
        pod = m.doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, m.id
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", m.id
        assert pod.get("automountServiceAccountToken") is False, m.id
        for c in containers(m):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (m.id, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (m.id, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (m.id, c["name"])
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (m.id, c["name"], kind)
            image = c["image"]
            tagged = ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
            assert tagged, (m.id, image)
    base = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    (image,) = base["images"]
    assert image["name"] == "mrsa" and image["newTag"] not in ("", "latest")
    mrsa_images = {
        c["image"] for m in of_kind("Deployment") for c in containers(m) if c["image"].startswith("mrsa:")
    }
    assert mrsa_images == {f"mrsa:{image['newTag']}"}, mrsa_images


def test_redis_starts_with_the_statefulsets_command_line(tmp_path: Path) -> None:
    """The in-cluster Redis' own shell command line, run here with the real redis-server (the
    paths moved to a temp dir, a free loopback port added): it starts with the password from
    the Secret's file, AOF every second, no eviction, and its probes pass."""
    (statefulset,) = of_kind("StatefulSet")
    (container,) = containers(statefulset)
    secret_dir = tmp_path / "auth"
    secret_dir.mkdir()
    (secret_dir / "password").write_text("s3cret-for-the-test")
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()

    def local(command: str) -> str:
        return command.replace("/etc/redis-auth", str(secret_dir)).replace("/data", str(data))

    assert container["command"] == ["sh", "-c"]
    (script,) = container["args"]
    server = subprocess.Popen(
        ["sh", "-c", f"{local(script)} --port {port} --bind 127.0.0.1 --daemonize no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        probe = local(container["readinessProbe"]["exec"]["command"][2]).replace(
            "redis-cli", f"redis-cli -p {port}"
        )
        deadline = time.monotonic() + 10
        while subprocess.run(["sh", "-c", probe], capture_output=True, check=False, timeout=5).returncode:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"redis did not become ready:\n{server.communicate()[0][-2000:]}")
            time.sleep(0.1)
        liveness = local(container["livenessProbe"]["exec"]["command"][2]).replace(
            "redis-cli", f"redis-cli -p {port}"
        )
        assert subprocess.run(["sh", "-c", liveness], check=False, timeout=5).returncode == 0

        def config(name: str) -> str:
            out = subprocess.run(
                ["redis-cli", "-p", str(port), "--no-auth-warning", "-a", "s3cret-for-the-test", "CONFIG", "GET", name],
                capture_output=True, text=True, check=True, timeout=5,
            )  # fmt: skip
            return out.stdout.splitlines()[1]

        assert config("appendonly") == "yes"
        assert config("appendfsync") == "everysec"
        assert config("maxmemory-policy") == "noeviction"
        assert config("save") == ""
        unauthenticated = subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, check=False, timeout=5
        )
        assert "NOAUTH" in unauthenticated.stdout + unauthenticated.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.redis
async def test_the_stream_length_keda_reads_counts_queued_and_running_tasks(
    redis_server: RedisServer,
) -> None:
    """Why the ScaledObject uses streamLength, on mrsa's real Redis store: the task stream's
    length is the tasks queued plus those in flight (an ack deletes its entry), while the group's
    lag counts only the queued ones, so it would read 0, and let the HPA remove busy workers, as
    soon as the workers have taken everything."""
    async with open_store(Settings(redis_url=redis_server.url)) as store:
        assert isinstance(store, RedisStore)
        await store.create_job(make_job("j1"), tasks_of("j1", n=5))
        taken = await store.take("w1", count=2, block_ms=100)
        await store.ack(taken[0])
        stream = task_stream(Settings().redis_prefix)
        assert await store.client.xlen(stream) == 3 + 1
        (group,) = await store.client.xinfo_groups(stream)
        assert group["name"] == GROUP
        assert group["lag"] == 3
        rest = await store.take("w1", count=3, block_ms=100)
        assert len(rest) == 3
        (group,) = await store.client.xinfo_groups(stream)
        assert group["lag"] == 0 and await store.client.xlen(stream) == 4
