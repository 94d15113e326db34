"""What ``mrsa --version`` says: the package's version and, when mrsa runs from a git checkout, the
revision it runs (``mrsa 0.1.0 (git 7f1afc8)``, ``+dirty`` when tracked files are modified).

The revision is the first thing a bug report needs, and in a checkout the package version alone
does not tell one commit from the next. It is read only from the checkout that holds this package
(not from whatever repository the user's shell is in), and every failure — git missing, not a
checkout, a slow or broken git — simply leaves it out.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

DISTRIBUTION = "mrsa"
GIT_TIMEOUT_S = 5.0


def package_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git on PATH, or it hung
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_revision(root: Path | None = None) -> str | None:
    """``7f1afc8`` or ``7f1afc8+dirty`` when ``root`` (default: the folder holding the ``mrsa``
    package) is the top of a git work tree; None otherwise."""
    root = (root or Path(__file__).resolve().parent.parent).resolve()
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root:
        return None  # an installed copy, or a folder inside someone else's repository
    revision = _git(root, "rev-parse", "--short=7", "HEAD")
    if not revision:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return f"{revision}+dirty" if status else revision


def version_line(root: Path | None = None) -> str:
    revision = git_revision(root)
    return f"mrsa {package_version()}" + (f" (git {revision})" if revision else "")
