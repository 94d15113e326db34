"""``/v1/reports``: the run folders under the server's reports folder and their report files, behind
the same keys as the rest of ``/v1``, with nothing outside the folder reachable (no ``..``, no
sub-folders, no links out, no file type that is not a report's)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from evals.configs import SweepConfig
from evals.rundir import Manifest, RunDir
from mrsa.api.app import create_app
from mrsa.api.deps import ApiConfig, ApiDeps
from mrsa.api.errors import ApiError
from mrsa.api.reports.folders import ReportsDir, open_regular
from mrsa.cli.settings import Settings
from mrsa.params import resolve_params
from mrsa.store.memory import MemoryStore

KEY = "reports-key-81d2"
AUTH = {"Authorization": f"Bearer {KEY}"}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
SECRET = "secret outside the reports folder"
OUTSIDE_MODEL = "model-of-a-run-outside-the-folder"


def make_run(root: Path, name: str, *, report: bool = True, model: str = "tiny-model") -> Path:
    run = RunDir(root / name)
    config = SweepConfig(id="smoke", preset="smoke", overrides={}, params=resolve_params("smoke"))
    run.save_manifest(Manifest(model=model, seeds=[0], configs=[config], datasets=[], grading={}))
    if report:
        (run.path / "report.md").write_text(
            "# mrsa benchmark report\n\n| a | b |\n|---|---:|\n| x | 1 |\n\n![plot](accuracy_vs_tokens.png)\n",
            encoding="utf-8",
        )
        (run.path / "metrics.json").write_text('{"complete": 1}\n', encoding="utf-8")
        (run.path / "accuracy_vs_tokens.png").write_bytes(PNG)
    (run.path / "records.jsonl").write_text('{"text": "every candidate"}\n', encoding="utf-8")
    return run.path


@pytest.fixture
def reports_dir(tmp_path: Path) -> Path:
    root = tmp_path / "reports"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET, encoding="utf-8")
    make_run(outside, "elsewhere", model=OUTSIDE_MODEL)
    (outside / "elsewhere" / "report.md").write_text(SECRET, encoding="utf-8")
    run = make_run(root, "sweep-a")
    make_run(root, "sweep-b", report=False)
    (root / "not-a-run").mkdir()  # no manifest.json: not listed
    (root / "broken").mkdir()
    (root / "broken" / "manifest.json").write_text("{", encoding="utf-8")  # listed, with the reason
    (run / "nested").mkdir()
    (run / "nested" / "x.md").write_text("nested", encoding="utf-8")
    os.symlink(outside / "secret.txt", run / "leak.txt")  # a link out of the folder
    os.symlink(outside / "elsewhere", root / "linked-run")  # a run folder that is a link
    return root


def app_for(reports_dir: Path | None) -> httpx.AsyncClient:
    deps = ApiDeps(store=MemoryStore(), config=ApiConfig(api_keys=[KEY], reports_dir=reports_dir))
    transport = httpx.ASGITransport(app=create_app(Settings(), deps))
    return httpx.AsyncClient(transport=transport, base_url="http://reports.test", timeout=30)


@pytest.fixture
async def api(reports_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with app_for(reports_dir) as client:
        yield client


async def test_reports_need_a_key(api: httpx.AsyncClient) -> None:
    for path in ("/v1/reports", "/v1/reports/sweep-a", "/v1/reports/sweep-a/files/report.md"):
        assert (await api.get(path)).status_code == 401, path
        assert (await api.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401


async def test_listing_shows_the_run_folders_only(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/reports", headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["configured"] is True
    by_name = {rep["name"]: rep for rep in body["reports"]}
    assert set(by_name) == {"sweep-a", "sweep-b", "broken"}  # no folder without a manifest, no link
    assert by_name["broken"]["error"].startswith("manifest.json: ") and by_name["broken"]["configs"] == []
    assert by_name["sweep-a"]["has_report"] and not by_name["sweep-b"]["has_report"]
    assert by_name["sweep-a"]["model"] == "tiny-model" and by_name["sweep-a"]["configs"] == ["smoke"]


async def test_no_reports_folder_is_an_empty_unconfigured_listing() -> None:
    async with app_for(None) as client:
        r = await client.get("/v1/reports", headers=AUTH)
        assert r.json() == {"configured": False, "reports": []}
        assert (await client.get("/v1/reports/sweep-a", headers=AUTH)).status_code == 404


async def test_a_report_lists_its_files_and_inlines_report_md(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/reports/sweep-a", headers=AUTH)
    assert r.status_code == 200
    view = r.json()
    names = [f["name"] for f in view["files"]]
    # records.jsonl (every candidate's text), the link and the sub-folder are not report files
    assert names == ["accuracy_vs_tokens.png", "manifest.json", "metrics.json", "report.md"]
    assert view["markdown"].startswith("# mrsa benchmark report")
    png = next(f for f in view["files"] if f["name"] == "accuracy_vs_tokens.png")
    assert (
        png["url"] == "/v1/reports/sweep-a/files/accuracy_vs_tokens.png" and png["media_type"] == "image/png"
    )
    assert (await api.get("/v1/reports/sweep-b", headers=AUTH)).json()["markdown"] is None


async def test_files_are_served_as_data(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/reports/sweep-a/files/accuracy_vs_tokens.png", headers=AUTH)
    assert r.status_code == 200 and r.content == PNG
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in r.headers["content-security-policy"]
    md = await api.get("/v1/reports/sweep-a/files/report.md", headers=AUTH)
    assert md.headers["content-type"].startswith("text/markdown") and "| x | 1 |" in md.text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/reports/sweep-a/files/records.jsonl",
        "/v1/reports/sweep-a/files/leak.txt",
        "/v1/reports/sweep-a/files/nested",
        "/v1/reports/sweep-a/files/nested%2Fx.md",
        "/v1/reports/sweep-a/files/..%2F..%2Foutside%2Fsecret.txt",
        "/v1/reports/sweep-a/files/%2E%2E",
        "/v1/reports/..",
        "/v1/reports/%2E%2E/files/secret.txt",
        "/v1/reports/linked-run",
        "/v1/reports/linked-run/files/report.md",
        "/v1/reports/not-a-run",
        "/v1/reports/.hidden",
        "/v1/reports/sweep-a/files/.manifest.json",
    ],
)
async def test_nothing_outside_the_run_folders_is_reachable(api: httpx.AsyncClient, path: str) -> None:
    r = await api.get(path, headers=AUTH)
    assert r.status_code in (404, 422), (path, r.status_code)
    assert SECRET not in r.text and "every candidate" not in r.text
    assert r.json()["message"]  # the API's error shape, naming what was not found or not valid


@pytest.fixture
def linked_files(reports_dir: Path, tmp_path: Path) -> Path:
    """Run folders whose manifest is a link out of the folder, a FIFO, or a link to a sibling's
    manifest, and a run whose report.md is a link out."""
    elsewhere = tmp_path / "outside" / "elsewhere"
    for name, target in (("linked-manifest", elsewhere), ("sibling-manifest", reports_dir / "sweep-a")):
        run = reports_dir / name
        run.mkdir()
        os.symlink(target / "manifest.json", run / "manifest.json")
        (run / "metrics.json").write_text("{}", encoding="utf-8")
    fifo = reports_dir / "fifo-manifest"
    fifo.mkdir()
    os.mkfifo(fifo / "manifest.json")
    linked_report = make_run(reports_dir, "linked-report", report=False)
    os.symlink(elsewhere / "report.md", linked_report / "report.md")
    return reports_dir


async def test_no_manifest_or_report_is_read_through_a_link(linked_files: Path) -> None:
    async with app_for(linked_files) as api:
        listing = await asyncio.wait_for(api.get("/v1/reports", headers=AUTH), 10)  # a FIFO does not hang it
        assert listing.status_code == 200
        names = {rep["name"] for rep in listing.json()["reports"]}
        # A run folder whose manifest is a link (out of the folder or not) or a FIFO is no run.
        assert names == {"sweep-a", "sweep-b", "broken", "linked-report"}
        assert OUTSIDE_MODEL not in listing.text
        for name in ("linked-manifest", "sibling-manifest", "fifo-manifest"):
            for path in (f"/v1/reports/{name}", f"/v1/reports/{name}/files/manifest.json"):
                r = await asyncio.wait_for(api.get(path, headers=AUTH), 10)
                assert r.status_code == 404 and OUTSIDE_MODEL not in r.text, (path, r.text)
        # A report.md that is a link is neither inlined, listed, counted as a report nor served.
        view = (await api.get("/v1/reports/linked-report", headers=AUTH)).json()
        assert view["markdown"] is None and not view["has_report"]
        assert "report.md" not in [f["name"] for f in view["files"]] and SECRET not in json.dumps(view)
        served = await api.get("/v1/reports/linked-report/files/report.md", headers=AUTH)
        assert served.status_code == 404 and SECRET not in served.text


def test_a_link_swapped_in_after_the_listing_is_not_followed(reports_dir: Path, tmp_path: Path) -> None:
    """The read opens the name itself without following links: a file replaced by a link between
    the listing and the read (``mrsa report`` racing an attacker) is refused, not followed."""
    reports = ReportsDir(reports_dir)
    run = reports_dir / "sweep-a"
    assert reports.view("sweep-a").model == "tiny-model"
    (run / "manifest.json").unlink()
    os.symlink(tmp_path / "outside" / "elsewhere" / "manifest.json", run / "manifest.json")
    with pytest.raises(ApiError) as caught:
        reports.view("sweep-a")
    assert caught.value.status == 404
    with pytest.raises(ApiError):
        reports.file("sweep-a", "manifest.json")
    (run / "metrics.json").unlink()
    os.symlink(tmp_path / "outside" / "secret.txt", run / "metrics.json")
    run_fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as refused:  # the open itself refuses the link (ELOOP)
            open_regular("metrics.json", run_fd)
    finally:
        os.close(run_fd)
    assert refused.value.errno == errno.ELOOP
