"""docker-compose.yml, the Dockerfiles and the monitoring config, checked by parsing them.

Docker cannot run where the tests run, so nothing here builds or starts a container: these tests
catch the mistakes that would only show at ``docker compose up`` — a URL naming a service that
does not exist, an undeclared volume, a worker that cannot be scaled, a Dockerfile that is not
there, a dashboard querying a metric nobody exports, an ``MRSA_*`` variable no setting reads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import REGISTRY

from mrsa import telemetry as shared_metrics
from mrsa.api.ops import prometheus as api_metrics
from mrsa.cli.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
CORE = {"redis", "api", "worker"}
BACKENDS = {"cpu": "cpu", "rocm": "rocm", "cuda": "cuda", "triton": "triton", "triton-rocm": "triton-rocm"}
VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with nothing set: the default ('' when there is none)."""
    return VAR.sub(lambda m: m.group(2) or "", value)


def env_of(name: str) -> dict[str, str]:
    env = SERVICES[name].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def command_of(name: str) -> list[str]:
    return [interpolate(str(part)) for part in SERVICES[name].get("command") or []]


def flag(command: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in a command line."""
    for i, part in enumerate(command):
        if part == name and i + 1 < len(command):
            return command[i + 1]
        if part.startswith(name + "="):
            return part.split("=", 1)[1]
    return None


def listen_port(name: str) -> int:
    """The port a service listens on inside its container."""
    cmd = command_of(name)
    port = flag(cmd, "--port") or flag(cmd, "--http-port")
    if port:
        return int(port)
    return {"redis": 6379, "prometheus": 9090, "grafana": 3000}[name]


def test_core_services_run_without_a_profile_and_backends_have_theirs() -> None:
    assert set(SERVICES) >= CORE
    for name in CORE:
        assert "profiles" not in SERVICES[name], name
    for name, profile in BACKENDS.items():
        assert SERVICES[name]["profiles"] == [profile]
    for name in ("prometheus", "grafana"):
        assert SERVICES[name]["profiles"] == ["monitoring"]
    assert set(SERVICES) == CORE | set(BACKENDS) | {"prometheus", "grafana"}


def test_urls_in_the_environment_point_at_services_that_exist() -> None:
    seen = 0
    for name in SERVICES:
        for key, value in env_of(name).items():
            if "://" not in value:
                continue
            host = urlsplit(value).hostname
            assert host in SERVICES, f"{name}: {key}={value} names no service"
            port = urlsplit(value).port
            assert port == listen_port(str(host)), (
                f"{name}: {key}={value}: {host} listens on {listen_port(str(host))}"
            )
            seen += 1
    assert seen >= 4


@pytest.mark.parametrize("name", ["api", "worker"])
def test_api_and_workers_share_redis_backend_and_keys(name: str) -> None:
    env = env_of(name)
    assert env["MRSA_REDIS_URL"] == "redis://redis:6379/0"
    assert urlsplit(env["MRSA_BACKEND_URL"]).hostname == "cpu"  # the default profile's backend
    assert "MRSA_API_KEYS" in env


def test_every_mrsa_variable_is_a_setting() -> None:
    """A misspelt MRSA_* name would be silently ignored by pydantic-settings."""
    fields = {f"MRSA_{name.upper()}" for name in Settings.model_fields}
    for name in SERVICES:
        for key in env_of(name):
            if key.startswith("MRSA_"):
                assert key in fields, f"{name}: {key} is not a setting"
    # and the values the compose file passes parse (a blank context length means "ask")
    env = {k: v for k, v in env_of("api").items() if k.startswith("MRSA_")}
    settings = Settings(**{k.removeprefix("MRSA_").lower(): v for k, v in env.items()})
    assert settings.backend_context_length is None and settings.api_key_list() == []
    assert settings.tokenizer is None  # a blank MRSA_TOKENIZER: no tokenizer (not the folder '.')


def test_depends_on_targets_exist_and_core_services_need_no_profile() -> None:
    for name, service in SERVICES.items():
        for target in service.get("depends_on") or []:
            assert target in SERVICES, f"{name} depends on unknown {target}"
            if name in CORE:
                assert target in CORE, f"{name} depends on {target}, which only runs in a profile"
    assert SERVICES["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in SERVICES["redis"]


def test_the_worker_is_scalable() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker  # no fixed host port: N replicas cannot share one
    assert interpolate(str(worker["deploy"]["replicas"])) == "2"
    assert worker["stop_grace_period"]  # SIGTERM gets time to finish or release in-flight tasks
    assert command_of("worker") == ["worker"]


def test_host_ports_are_unique_and_map_to_listening_ports() -> None:
    published: dict[int, str] = {}
    for name, service in SERVICES.items():
        for mapping in service.get("ports") or []:
            _ip, host, container = interpolate(str(mapping)).split(":")
            assert int(host) not in published, f"{name} and {published.get(int(host))} both publish {host}"
            published[int(host)] = name
            assert int(container) == listen_port(name), f"{name}: publishes {container}"
    assert published[8000] == "api"
    assert set(published.values()) == {"api", "prometheus", "grafana"}


def test_published_ports_bind_the_hosts_loopback_unless_told_otherwise() -> None:
    """Nothing is reachable from other machines by default: every published port names its host
    address, MRSA_BIND, defaulting to 127.0.0.1 (the API without keys, Grafana's anonymous viewer)."""
    seen = 0
    for name, service in SERVICES.items():
        for mapping in service.get("ports") or []:
            assert isinstance(mapping, str) and mapping.startswith("${MRSA_BIND:-127.0.0.1}:"), (
                name,
                mapping,
            )
            assert interpolate(mapping).split(":")[0] == "127.0.0.1"
            seen += 1
    assert seen == 3
    text = (ROOT / "docker-compose.yml").read_text()
    assert "MRSA_BIND=0.0.0.0" in text and "MRSA_API_KEYS" in text  # how to open them, and what first
    doc = (ROOT / "docs" / "service.md").read_text()
    assert "MRSA_BIND" in doc


def test_the_api_in_compose_allows_no_auth_only_explicitly() -> None:
    """Inside its container the API listens on 0.0.0.0 (the published port needs it), which
    `mrsa serve` refuses without keys unless allowed: compose says so, and it can be turned off."""
    assert flag(command_of("api"), "--host") == "0.0.0.0"
    raw = SERVICES["api"]["environment"]["MRSA_ALLOW_NO_AUTH"]
    assert raw == "${MRSA_ALLOW_NO_AUTH:-true}"
    assert Settings(allow_no_auth=interpolate(raw)).allow_no_auth
    assert not Settings(allow_no_auth="false").allow_no_auth


def test_volumes_are_declared_and_bind_mounts_exist() -> None:
    declared = set(COMPOSE["volumes"])
    used = set()
    for name, service in SERVICES.items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared
    assert "redis-data:/data" in SERVICES["redis"]["volumes"]


def test_redis_keeps_an_append_only_file() -> None:
    cmd = command_of("redis")
    assert flag(cmd, "--appendonly") == "yes"


def test_referenced_dockerfiles_exist() -> None:
    built = 0
    for name, service in SERVICES.items():
        build = service.get("build")
        if build is None:
            continue
        context = ROOT / build["context"]
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
        built += 1
    assert built >= 5  # api, worker, cpu (one image), rocm and triton-rocm


def test_rocm_serves_zaya1_with_the_design_flags_and_no_tensor_parallel() -> None:
    dockerfile = (ROOT / "docker/rocm/Dockerfile").read_text()
    assert "github.com/Zyphra/vllm" in dockerfile and "rocm" in dockerfile
    for name in ("rocm", "cuda"):
        cmd = command_of(name)
        assert cmd[0] == "Zyphra/ZAYA1-8B"
        assert flag(cmd, "--mamba-cache-dtype") == "float32"
        assert flag(cmd, "--dtype") == "bfloat16"
        assert flag(cmd, "--reasoning-parser") == "qwen3"
        assert flag(cmd, "--tensor-parallel-size") == "1"
        assert flag(cmd, "--data-parallel-size") is not None and "--enable-expert-parallel" in cmd
        # zaya1 preset: K·τ + β ≈ 57k tokens must fit
        assert int(flag(cmd, "--max-model-len") or 0) >= 4 * 4096 + 40960 + 1024
    assert SERVICES["rocm"]["devices"] == ["/dev/kfd", "/dev/dri"]


def test_triton_has_a_vllm_model_repository() -> None:
    cmd = command_of("triton")
    assert "--model-repository=/models" in cmd
    assert "./docker/triton/model_repository:/models:ro" in SERVICES["triton"]["volumes"]
    repo = ROOT / "docker/triton/model_repository"
    (model,) = [p for p in repo.iterdir() if p.is_dir()]
    config = (model / "config.pbtxt").read_text()
    assert re.search(r'^backend:\s*"vllm"', config, re.MULTILINE)
    engine = json.loads((model / "1" / "model.json").read_text())
    assert engine["model"] == "Zyphra/ZAYA1-8B"
    assert (engine["dtype"], engine["mamba_cache_dtype"]) == ("bfloat16", "float32")


def test_the_cpu_backend_is_the_embedded_model_on_all_interfaces() -> None:
    cmd = command_of("cpu")
    assert cmd[0] == "backend" and flag(cmd, "--host") == "0.0.0.0"
    assert SERVICES["cpu"]["image"] == SERVICES["api"]["image"]  # the same mrsa image


def test_prometheus_scrapes_compose_services_on_their_ports() -> None:
    config = yaml.safe_load((ROOT / "monitoring/prometheus.yml").read_text())
    worker_port = int(env_of("worker")["MRSA_WORKER_METRICS_PORT"])
    targets = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets += static["targets"]
        for dns in job.get("dns_sd_configs", []):
            targets += [f"{n}:{dns['port']}" for n in dns["names"]]
    assert targets
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in SERVICES, f"scrape target {target} is not a compose service"
        special = {"worker": worker_port, "triton": 8002}
        expected = special[host] if host in special else listen_port(host)
        assert int(port) == expected, target
    assert {"api:8000", f"worker:{worker_port}"} <= set(targets)


def _exported_metrics() -> set[str]:
    """Every series name the processes export (labelled metrics have no samples until used)."""
    assert shared_metrics.JOBS_FINISHED and api_metrics.JOBS_BY_STATUS  # both modules registered
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = set()
    for family in REGISTRY.collect():
        names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    return names


def test_grafana_is_provisioned_and_the_dashboard_queries_exported_metrics() -> None:
    datasource = yaml.safe_load(
        (ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert urlsplit(datasource["url"]).hostname == "prometheus"
    provider = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/dashboards/mrsa.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert "./monitoring/grafana/dashboards:" + path + ":ro" in SERVICES["grafana"]["volumes"]

    dashboard = json.loads((ROOT / "monitoring/grafana/dashboards/mrsa.json").read_text())
    exported = _exported_metrics()
    names = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]
        for target in panel["targets"]:
            names |= {n for n in re.findall(r"\b(mrsa_\w+)", target["expr"])}
    assert names and names <= exported, names - exported
    # the metrics the issue asks for are on the dashboard
    for wanted in (
        "mrsa_jobs",
        "mrsa_rounds_completed_total",
        "mrsa_queue_tasks_queued",
        "mrsa_queue_tasks_in_flight",
        "mrsa_queue_tasks_pending_reclaim",
        "mrsa_tasks_reclaimed_total",
        "mrsa_tasks_dead_lettered_total",
        "mrsa_backend_request_seconds_bucket",
        "mrsa_decode_tokens_total",
        "mrsa_prompt_tokens_total",
        "mrsa_backend_retries_total",
        "mrsa_backend_errors_total",
    ):
        assert wanted in names, wanted


@pytest.mark.parametrize("name", ["triton", "triton-rocm"])
def test_triton_profiles_serve_the_vllm_model_repository(name: str) -> None:
    cmd = command_of(name)
    assert cmd[0] == "tritonserver" and "--model-repository=/models" in cmd
    assert "./docker/triton/model_repository:/models:ro" in SERVICES[name]["volumes"]
    assert listen_port(name) == 8000 and flag(cmd, "--metrics-port") == "8002"


def test_triton_rocm_is_amds_triton_over_zyphras_vllm() -> None:
    dockerfile = (ROOT / "docker/triton-rocm/Dockerfile").read_text()
    assert "ROCm/triton-inference-server-vllm_backend" in dockerfile  # AMD's vLLM backend
    assert "ROCm/triton-inference-server-server" in dockerfile  # AMD's tritonserver build
    assert "mrsa-vllm-rocm" in dockerfile  # docker/rocm/Dockerfile: Zyphra's fork on ROCm
    assert "github.com/Zyphra/vllm" in (ROOT / "docker/rocm/Dockerfile").read_text()
    assert SERVICES["triton-rocm"]["devices"] == ["/dev/kfd", "/dev/dri"]
    assert "deploy" not in SERVICES["triton-rocm"]  # no NVIDIA device reservation


@pytest.mark.parametrize("name", ["api", "worker"])
def test_api_and_workers_can_read_the_served_models_tokenizer(name: str) -> None:
    assert "MRSA_TOKENIZER" in env_of(name)
    assert "./docker/triton/tokenizer:/tokenizer:ro" in SERVICES[name]["volumes"]
    assert (ROOT / "docker/triton/tokenizer/README.md").is_file()
