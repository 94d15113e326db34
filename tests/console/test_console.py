"""The web console's serving (no browser: tests/console/test_console_browser.py drives Chromium): the
redirects, index.html and its modules from the package, the Content-Security-Policy and nosniff on
every console response, no key needed for the static files while the data routes still ask for one,
and static checks of the front end's rules (no inline script, text never inserted as HTML)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from mrsa.api.app import create_app
from mrsa.api.deps import ApiConfig, ApiDeps
from mrsa.cli.settings import Settings
from mrsa.console.serving import STATIC_DIR
from mrsa.store.memory import MemoryStore

KEY = "console-key-5c1f"
REQUIRED_CSP = [
    "default-src 'self'",
    "script-src 'self'",
    "object-src 'none'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
]
# The DOM contract the browser tests select through (briefs/console-contract.md).
CONTRACT_TEST_IDS = [
    "api-key-dialog",
    "api-key-input",
    "api-key-save",
    "api-key-forget",
    "submit-form",
    "submit-button",
    "jobs-table",
    "job-status",
    "cancel-job",
    "lineage",
    "round-column",
    "node",
    "edge",
    "votes",
    "final-votes",
    "selected-answer",
    "usage",
    "candidate-panel",
    "candidate-prompt",
    "candidate-reasoning",
    "candidate-content",
    "candidate-answer",
    "candidate-finish",
    "candidate-tokens",
    "candidate-tail",
    "candidate-parent",
    "reports-list",
    "report",
    "report-view",
]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    deps = ApiDeps(store=MemoryStore(), config=ApiConfig(api_keys=[KEY]))
    app = create_app(Settings(), deps)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test", timeout=30) as c:
        yield c


def assert_secured(response: httpx.Response) -> None:
    csp = response.headers.get("content-security-policy", "")
    for directive in REQUIRED_CSP:
        assert directive in csp, (response.url, csp)
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers.get("x-content-type-options") == "nosniff"


def static_files() -> list[str]:
    return sorted(p.name for p in STATIC_DIR.iterdir() if p.is_file())


async def test_root_and_bare_ui_redirect_to_the_console(client: httpx.AsyncClient) -> None:
    for path in ("/", "/ui"):
        r = await client.get(path)
        assert r.status_code == 307 and r.headers["location"] == "/ui/", path
        assert_secured(r)


async def test_index_and_every_static_file_are_served_without_a_key(client: httpx.AsyncClient) -> None:
    index = await client.get("/ui/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert_secured(index)
    assert 'src="static/app.js"' in index.text and 'href="static/style.css"' in index.text
    kinds = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
    for name in static_files():
        r = await client.get(f"/ui/static/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(kinds[name[name.rindex(".") :]]), name
        assert_secured(r)
    # the data routes still need the key
    assert (await client.get("/v1/jobs")).status_code == 401
    assert (await client.get("/v1/reports")).status_code == 401


async def test_a_missing_static_file_is_a_404_with_the_same_headers(client: httpx.AsyncClient) -> None:
    for path in ("/ui/static/nope.js", "/ui/static/../serving.py", "/ui/static/%2e%2e/serving.py"):
        r = await client.get(path)
        assert r.status_code == 404, path
        assert "STATIC_DIR" not in r.text
    assert_secured(await client.get("/ui/static/nope.js"))


async def test_console_routes_are_not_in_the_api_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")]


def test_every_module_import_resolves_to_a_shipped_file() -> None:
    names = set(static_files())
    for name in names:
        if not name.endswith(".js"):
            continue
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        for target in re.findall(r"""^import .* from "\./([\w.-]+)";$""", text, flags=re.M):
            assert target in names, f"{name} imports missing {target}"


def test_front_end_inserts_text_as_text_and_has_no_inline_code() -> None:
    """The CSP forbids inline script and eval; text from models and users must never be parsed as
    HTML. Both are rules of the source, checked here on every file."""
    forbidden = [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        'setAttribute("style"',
        "DOMParser",
        "createContextualFragment",
    ]
    for name in static_files():
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        for word in forbidden:
            assert word not in text, f"{name} uses {word}"
    index = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)", index), "inline <script> in index.html"
    assert not re.search(r"\sstyle=|<style|\son[a-z]+=", index), "inline style or handler in index.html"


def test_the_dom_contract_test_ids_exist_in_the_front_end() -> None:
    source = "\n".join((STATIC_DIR / n).read_text(encoding="utf-8") for n in static_files())
    missing = [t for t in CONTRACT_TEST_IDS if f'"{t}"' not in source]
    assert not missing
