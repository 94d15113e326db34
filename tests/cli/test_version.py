"""``mrsa --version``: the package version, plus the git revision when run from a checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mrsa.version import git_revision, package_version, version_line

REPO = Path(__file__).resolve().parents[2]


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()


def version_cli(
    env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mrsa", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / "tracked.txt").write_text("one\n")
    git(root, "add", "tracked.txt")
    git(root, "commit", "-q", "-m", "first")
    return root


def test_the_package_version_is_the_distributions() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", package_version())


def test_a_clean_checkout_gives_its_short_revision(checkout: Path) -> None:
    head = git(checkout, "rev-parse", "--short=7", "HEAD")
    assert git_revision(checkout) == head
    assert version_line(checkout) == f"mrsa {package_version()} (git {head})"


def test_a_modified_tracked_file_marks_it_dirty(checkout: Path) -> None:
    (checkout / "tracked.txt").write_text("two\n")
    assert git_revision(checkout) == git(checkout, "rev-parse", "--short=7", "HEAD") + "+dirty"


def test_an_untracked_file_does_not(checkout: Path) -> None:
    (checkout / "scratch.txt").write_text("notes\n")
    assert git_revision(checkout) == git(checkout, "rev-parse", "--short=7", "HEAD")


def test_not_a_checkout_gives_no_revision(tmp_path: Path) -> None:
    assert git_revision(tmp_path) is None
    assert version_line(tmp_path) == f"mrsa {package_version()}"


def test_a_folder_inside_another_repository_is_not_its_checkout(checkout: Path) -> None:
    """An installed copy of mrsa inside some other repository must not report that repository."""
    inner = checkout / "site-packages"
    inner.mkdir()
    assert git_revision(inner) is None


def test_a_repository_without_commits_gives_no_revision(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    assert git_revision(tmp_path) is None


def test_cli_from_this_checkout_names_its_revision() -> None:
    proc = version_cli()
    assert proc.returncode == 0, proc.stderr
    head = git(REPO, "rev-parse", "--short=7", "HEAD")
    dirty = "+dirty" if git(REPO, "status", "--porcelain", "--untracked-files=no") else ""
    assert proc.stdout == f"mrsa {package_version()} (git {head}{dirty})\n"


def test_cli_without_git_prints_the_version_alone(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty folder: no git on PATH
    proc = version_cli(env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"mrsa {package_version()}\n"
    assert "Traceback" not in proc.stderr
