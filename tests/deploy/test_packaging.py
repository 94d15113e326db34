"""The installed wheel carries the prompt templates, the bundled Triton's model file and the web
console's static files (not only the source tree)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_prompts_and_console_and_loads_them(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = list(out.glob("mrsa-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    templates = (
        "round0",
        "aggregate",
        "aggregate_single",
        "candidate",
        "continue",
        "continue_head",
        "summarize",
    )
    for prompt_set in ("v1", "pacore"):
        for template in templates:
            assert f"mrsa/_prompts/{prompt_set}/{template}.txt" in names
    # the bundled Triton's model and tokenizer converter run from the installed package's files
    assert {"mrsa/servers/triton_model.py", "mrsa/servers/gguf_tokenizer.py"} <= set(names)
    # the web console's files, every one of them, served from the installed package
    console = sorted(p.name for p in (ROOT / "mrsa" / "console" / "static").iterdir() if p.is_file())
    assert {"index.html", "app.js", "style.css"} <= set(console)
    assert {f"mrsa/console/static/{name}" for name in console} <= set(names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "from mrsa.engine import prompts; import pathlib;"
        "root = prompts.prompts_root(); assert root.name == '_prompts', root;"
        "print(prompts.aggregation_prompt('v1', 'Q?', ['a', 'b']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    served = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mrsa.console import serving; print(serving.INDEX.is_file(), serving.STATIC_DIR)",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 0, served.stderr
    assert served.stdout.startswith(f"True {site}")
    assert proc.stdout.startswith("Q?\n\n") and "<attempt 2>\nb\n</attempt 2>" in proc.stdout
