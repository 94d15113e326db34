"""Sweep reports the API serves: the run folders (``mrsa bench --out``) under ``MRSA_REPORTS_DIR``
and the files ``mrsa report`` wrote into them.

Only what is directly inside the reports folder is visible: a *run* is a sub-folder holding a
``manifest.json``; its files are the regular files directly inside it whose names end in one of
:data:`MEDIA_TYPES`. Names from a request are checked against a strict pattern and looked up in
that listing, never joined onto a path, so ``..``, absolute paths and separators cannot reach
anything else.

Nothing is read through a symbolic link, the manifest included: a run folder is opened with
``O_DIRECTORY | O_NOFOLLOW`` relative to the reports folder's descriptor, and every file with
``O_NOFOLLOW`` relative to the run folder's, then checked to be a regular file on the descriptor
itself (``fstat``). A link swapped in between the listing and the read fails the open instead of
being followed, and a FIFO (opened non-blocking) is refused instead of hanging the read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from pydantic import ValidationError

from evals.rundir import MANIFEST, REPORT, Manifest
from mrsa.api.errors import ApiError
from mrsa.api.reports.schemas import ReportFile, ReportList, ReportSummary, ReportView

# The files of a run folder the API hands out, by suffix. records.jsonl is left out: it holds every
# candidate's full text and can be gigabytes; the report's tables and plots are what is shown.
MEDIA_TYPES = {
    ".md": "text/markdown; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".csv": "text/csv; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
# Markdown larger than this is not inlined into the report view (the file stays downloadable).
MAX_INLINE_MARKDOWN_BYTES = 2 * 2**20
# A manifest larger than this is not read (the listing shows why); a real one is a few kB.
MAX_MANIFEST_BYTES = 4 * 2**20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO does not wait for a writer (it is then refused as not a regular file).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _Found(NamedTuple):
    size: int
    mtime: float


class OpenedFile(NamedTuple):
    """A run's file, opened (never through a link), with what its reply needs."""

    file: BinaryIO
    size: int
    media_type: str


def open_regular(name: str, dir_fd: int) -> tuple[int, os.stat_result]:
    """A descriptor of the regular file ``name`` directly inside ``dir_fd`` and its status;
    OSError for a link (``ELOOP``), a FIFO, a folder or anything else that is not a regular file."""
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"{name} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _read(name: str, dir_fd: int, limit: int) -> bytes:
    """The bytes of the regular file ``name`` inside ``dir_fd`` (no link followed); OSError when
    it is not one or holds more than ``limit`` bytes."""
    fd, info = open_regular(name, dir_fd)
    with os.fdopen(fd, "rb") as f:
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes")
    return data


class _RunFolder:
    """One run folder, opened by descriptor: every read inside it goes through :func:`_read`."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self.fd = fd

    def files(self) -> dict[str, _Found]:
        """The servable files directly inside the run by name (regular files, no links); a file
        that disappears while it is listed (``mrsa report`` rewriting the folder) is left out."""
        found: dict[str, _Found] = {}
        with os.scandir(self.fd) as entries:
            for entry in entries:
                if not _NAME.match(entry.name) or Path(entry.name).suffix not in MEDIA_TYPES:
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    found[entry.name] = _Found(info.st_size, info.st_mtime)
        return found

    def read(self, file_name: str, limit: int) -> bytes:
        return _read(file_name, self.fd, limit)

    def open(self, file_name: str) -> tuple[BinaryIO, int]:
        fd, info = open_regular(file_name, self.fd)
        return os.fdopen(fd, "rb"), info.st_size

    def modified(self, files: dict[str, _Found]) -> float:
        return max([os.fstat(self.fd).st_mtime, *(f.mtime for f in files.values())])


class ReportsDir:
    """The run folders under one folder (or none when the server has no reports folder)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    @contextlib.contextmanager
    def _opened_root(self) -> Iterator[int | None]:
        """The reports folder's descriptor (the folder the server was given may itself be a link:
        that is its operator's choice), or None when there is none."""
        if self.root is None:
            yield None
            return
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            yield None
            return
        try:
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    @contextlib.contextmanager
    def _opened_run(root_fd: int, name: str) -> Iterator[_RunFolder | None]:
        """The run folder ``name`` directly under ``root_fd``: a real folder (not a link) holding a
        ``manifest.json`` that is a regular file (not a link either); else None."""
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=root_fd)
        except OSError:
            yield None
            return
        try:
            manifest = os.stat(MANIFEST, dir_fd=fd, follow_symlinks=False)
        except OSError:
            manifest = None
        try:
            yield _RunFolder(name, fd) if manifest is not None and stat.S_ISREG(manifest.st_mode) else None
        finally:
            os.close(fd)

    def listing(self) -> ReportList:
        summaries: list[ReportSummary] = []
        with self._opened_root() as root_fd:
            if root_fd is not None:
                with os.scandir(root_fd) as entries:
                    names = [e.name for e in entries if _NAME.match(e.name)]
                for name in names:
                    with self._opened_run(root_fd, name) as run:
                        if run is not None:
                            summaries.append(self._summary(run, run.files()))
        summaries.sort(key=lambda s: (-s.modified_at, s.name))
        return ReportList(configured=self.root is not None, reports=summaries)

    @contextlib.contextmanager
    def _run(self, name: str) -> Iterator[_RunFolder]:
        """The run ``name``, open for the block, or 404."""
        with self._opened_root() as root_fd:
            if root_fd is None or not _NAME.match(name):
                raise ApiError(404, f"no report {name!r}")
            with self._opened_run(root_fd, name) as run:
                if run is None:
                    raise ApiError(404, f"no report {name!r}")
                yield run

    def view(self, name: str) -> ReportView:
        with self._run(name) as run:
            files = run.files()
            markdown = None
            report = files.get(REPORT)
            if report is not None and report.size <= MAX_INLINE_MARKDOWN_BYTES:
                with contextlib.suppress(OSError):
                    markdown = run.read(REPORT, MAX_INLINE_MARKDOWN_BYTES).decode("utf-8", errors="replace")
            summary = self._summary(run, files)
        return ReportView(
            **summary.model_dump(),
            files=[
                ReportFile(
                    name=file_name,
                    size=found.size,
                    media_type=MEDIA_TYPES[Path(file_name).suffix],
                    url=f"/v1/reports/{name}/files/{file_name}",
                )
                for file_name, found in sorted(files.items())
            ],
            markdown=markdown,
        )

    def file(self, name: str, file_name: str) -> OpenedFile:
        """A run's file, opened (the caller closes it), or 404."""
        missing = ApiError(404, f"report {name!r} has no file {file_name!r}")
        if not _NAME.match(file_name) or Path(file_name).suffix not in MEDIA_TYPES:
            raise missing
        with self._run(name) as run:
            try:
                f, size = run.open(file_name)
            except OSError:
                raise missing from None
        return OpenedFile(f, size, MEDIA_TYPES[Path(file_name).suffix])

    @staticmethod
    def _summary(run: _RunFolder, files: dict[str, _Found]) -> ReportSummary:
        summary = ReportSummary(name=run.name, modified_at=run.modified(files), has_report=REPORT in files)
        try:
            manifest = Manifest.model_validate_json(run.read(MANIFEST, MAX_MANIFEST_BYTES))
        except (OSError, ValueError, ValidationError) as exc:
            summary.error = f"{MANIFEST}: {str(exc).splitlines()[0]}"[:300]
            return summary
        summary.model = manifest.model
        summary.configs = [c.id for c in manifest.configs]
        summary.datasets = [d.name for d in manifest.datasets]
        return summary
