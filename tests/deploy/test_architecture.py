"""The architecture contract (pyproject.toml's ``[tool.importlinter]``, run by ``make lint``) holds
on the tree, and it is not vacuous: a copy of the tree given one import across the layers fails,
naming the contract that import breaks and the line that makes it, while every other contract stays
kept. The real ``lint-imports`` runs on real source files; nothing is faked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
# The dev extra installs it beside the interpreter (requirements/lock.txt pins it).
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _contracts() -> dict[str, str]:
    """``{contract id: contract name}``, as lint-imports prints the names."""
    return {contract["id"]: contract["name"] for contract in CONFIG["contracts"]}


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on ``tree`` (its pyproject.toml, its packages first on the path)."""
    assert LINT_IMPORTS.is_file(), f"{LINT_IMPORTS} is missing: install the dev extra (make setup)"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _copy_tree(dest: Path) -> Path:
    """The Python source of every package the contract reads, and pyproject.toml, under ``dest``."""

    def not_source(folder: str, names: list[str]) -> set[str]:
        return {
            n for n in names if not (n.endswith(".py") or (Path(folder) / n).is_dir()) or n == "__pycache__"
        }

    for package in CONFIG["root_packages"]:
        shutil.copytree(ROOT / package, dest / package, ignore=not_source)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _verdicts(output: str) -> dict[str, str]:
    """``{contract name: 'KEPT' or 'BROKEN'}`` from lint-imports' summary lines."""
    verdicts: dict[str, str] = {}
    for name in _contracts().values():
        match = re.search(rf"^{re.escape(name)} (KEPT|BROKEN)\b", output, re.MULTILINE)
        if match:
            verdicts[name] = match.group(1)
    return verdicts


def test_the_tree_keeps_every_contract() -> None:
    result = _lint(ROOT)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert _verdicts(out) == dict.fromkeys(_contracts().values(), "KEPT"), out


def test_a_copy_of_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    """The copy the next test breaks is faithful: as it is, it passes."""
    result = _lint(_copy_tree(tmp_path))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert _verdicts(out) == dict.fromkeys(_contracts().values(), "KEPT"), out


@pytest.mark.parametrize(
    ("package", "imported", "broken", "message"),
    [
        # Upward: the store reaching the API it serves.
        ("mrsa/store", "mrsa.api", {"layers"}, "mrsa.store is not allowed to import mrsa.api"),
        # Across independent siblings: the engine starting servers.
        ("mrsa/engine", "mrsa.servers", {"layers"}, "mrsa.engine is not allowed to import mrsa.servers"),
        # A backend client starting a server: a layer down and a forbidden boundary at once.
        (
            "mrsa/backends",
            "mrsa.servers",
            {"layers", "clients-launch-nothing"},
            "mrsa.backends is not allowed to import mrsa.servers",
        ),
        # Shipped code leaning on test support.
        ("workers", "testkit", {"no-test-support-in-mrsa"}, "workers is not allowed to import testkit"),
        # Test support reaching the CLI.
        ("testkit", "mrsa.cli", {"testkit-below-benchmarks"}, "testkit is not allowed to import mrsa.cli"),
    ],
)
def test_an_import_across_the_layers_breaks_the_contract_that_forbids_it(
    tmp_path: Path, package: str, imported: str, broken: set[str], message: str
) -> None:
    tree = _copy_tree(tmp_path)
    probe = tree / package / "contract_probe.py"
    probe.write_text(f'"""An import the architecture forbids."""\n\nimport {imported}  # noqa: F401\n')
    importer = package.replace("/", ".") + ".contract_probe"

    result = _lint(tree)
    out = result.stdout + result.stderr

    assert result.returncode == 1, out
    names = _contracts()
    assert _verdicts(out) == {
        name: ("BROKEN" if contract_id in broken else "KEPT") for contract_id, name in names.items()
    }, out
    assert message in out, out
    assert f"{importer} -> {imported} (l.3)" in out, out
