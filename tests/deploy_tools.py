"""The validators of ``deploy/`` that cannot live in mrsa's own environment, built once under the
cache folder (``$MRSA_CACHE_DIR``, else ``~/.cache/mrsa``) by ``make deploy-validators`` before
pytest, so no test's timeout has to cover a first build:

* **checkov** (PyPI), the static security check, in a private venv: its pins (an exact
  ``jsonschema``, ``networkx``, ``boto3`` …) clash with mrsa's (the pattern of
  :mod:`mrsa.servers.bundled_envs`);
* the **CRD validators** of KEDA, the Prometheus Operator and the Gateway API: the npm packages
  ``@kubernetes-models/*``, whose validation functions are generated from each project's Go API
  types (the ones its published CRDs are generated from), installed with npm into a folder of
  their own.

The Kubernetes schemas themselves come from PyPI's ``kubernetes-validate``, a dev dependency of
mrsa. ``python -m tests.deploy_tools`` builds both and prints where they are.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from mrsa.servers.bundled_envs import EnvSpec, cache_root, ensure_env, file_lock, relock, tail_of

CHECKOV_VERSION = "3.3.30"
# Exact versions: a new release of a model package can change what it accepts.
NPM_MODELS = {
    "@kubernetes-models/keda": "2.0.0",
    "@kubernetes-models/prometheus-operator": "6.0.0",
    "@kubernetes-models/gateway-api": "2.0.0",
}


class ValidatorUnavailable(RuntimeError):
    """A validator could not be built; the message ends with the installer's last lines."""


# Committed locks: checkov's env (every package pinned, written by ``--relock``) and the npm
# validators' package.json + package-lock.json (installed with ``npm ci``).
LOCKS = Path(__file__).parent / "locks"
NPM_PROJECT = LOCKS / "deploy-validators-npm"


def checkov_spec() -> EnvSpec:
    return EnvSpec("checkov", ((f"checkov=={CHECKOV_VERSION}",),), lock=LOCKS / "checkov.txt")


def ensure_checkov() -> Path:
    """The ``checkov`` executable of its private environment (built first if needed)."""
    env = ensure_env(checkov_spec(), _say)
    return env / "bin" / "checkov"


def _npm_manifest() -> dict[str, object]:
    return {"name": "mrsa-deploy-validators", "private": True, "dependencies": NPM_MODELS}


def npm_models_dir() -> Path:
    """The folder whose ``node_modules`` holds :data:`NPM_MODELS`, keyed by the committed lockfile."""
    lockfile = NPM_PROJECT / "package-lock.json"
    content = lockfile.read_bytes() if lockfile.is_file() else json.dumps(NPM_MODELS).encode()
    key = hashlib.sha256(content).hexdigest()[:12]
    return cache_root() / "npm" / f"kubernetes-models-{key}"


def ensure_npm_models() -> Path:
    """The ``node_modules`` folder of the CRD validators, installed with npm the first time
    (``--ignore-scripts``: the packages are plain generated JavaScript)."""
    root = npm_models_dir()
    ready = root / ".ready"
    if ready.exists():
        return root / "node_modules"
    npm = shutil.which("npm")
    if npm is None:
        raise ValidatorUnavailable("npm is not installed (Debian: apt-get install nodejs npm)")
    with file_lock(root.with_name(root.name + ".lock")):
        if ready.exists():
            return root / "node_modules"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(NPM_PROJECT / name, root / name)
        log = root.with_name(root.name + ".log")
        _say(f"installing {', '.join(NPM_MODELS)} into {root} with npm ci (log: {log}); this runs once")
        _npm(npm, ["ci"], root, log)
        ready.write_text(json.dumps(NPM_MODELS))
    return root / "node_modules"


def _npm(npm: str, args: list[str], cwd: Path, log: Path) -> None:
    with log.open("w") as out:
        result = subprocess.run(
            [npm, *args, "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=900,
        )
    if result.returncode != 0:
        raise ValidatorUnavailable(f"npm {' '.join(args)} exited {result.returncode}:\n{tail_of(log)}")


def relock_npm() -> None:
    """Write the npm validators' package.json and package-lock.json anew (npm resolves)."""
    npm = shutil.which("npm")
    if npm is None:
        raise ValidatorUnavailable("npm is not installed (Debian: apt-get install nodejs npm)")
    NPM_PROJECT.mkdir(parents=True, exist_ok=True)
    (NPM_PROJECT / "package.json").write_text(json.dumps(_npm_manifest(), indent=2) + "\n")
    (NPM_PROJECT / "package-lock.json").unlink(missing_ok=True)
    _npm(npm, ["install", "--package-lock-only"], NPM_PROJECT, NPM_PROJECT.with_suffix(".log"))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    """``python -m tests.deploy_tools [--relock]``: build checkov's environment and the CRD
    validators now; with ``--relock``, first write their locks anew (``make lock``)."""
    if "--relock" in sys.argv[1:]:
        relock(checkov_spec(), _say)
        relock_npm()
    print(f"checkov: {ensure_checkov()}")
    print(f"CRD validators: {ensure_npm_models()}")


if __name__ == "__main__":
    main()
