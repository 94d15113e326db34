"""The bundled Triton's own promises: a server that cannot start says why with its log, it dies with
its parent, and the tokenizer built from the GGUF tokenizes as llama.cpp does."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mrsa.backends.triton_prompt import LocalTokenizer
from mrsa.servers.bundled_triton import TritonServer, TritonUnavailable
from mrsa.servers.embedded import model_path
from tests.plugins.servers import ServerHandle

STRINGS = [
    "hello world",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    " 12 × 13 = 156, ∑ αβ. \\boxed{42}\n\n  tabs\tand  spaces ",
    "émoji 🎉 日本語 and Ünïcödé",
    "</think> so the answer is 7",
]


def test_a_server_that_cannot_start_says_why_with_its_log() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = TritonServer(port=taken.getsockname()[1])
        with pytest.raises(TritonUnavailable) as caught:
            asyncio.run(server.start(timeout_s=120))
        server.stop()
    message = str(caught.value)
    assert "tritonserver exited" in message and str(server.log_path) in message
    assert "Address already in use" in message or "failed to start" in message.lower(), message


def test_the_server_dies_with_its_killed_parent(tmp_path: Path) -> None:
    code = (
        "import asyncio, time\n"
        "from mrsa.servers.bundled_triton import TritonServer\n"
        "s = TritonServer()\n"
        "asyncio.run(s.start())\n"
        "print(s.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        proc = Path(f"/proc/{server_pid}")
        args = (proc / "cmdline").read_text().split("\0")
    finally:
        parent.send_signal(signal.SIGKILL)  # no cleanup code of ours runs
        parent.wait(timeout=30)
    root = Path(next(a for a in args if a.startswith("--model-repository=")).split("=", 1)[1]).parent
    deadline = time.monotonic() + 60
    while proc.exists() and "zombie" not in (proc / "status").read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not proc.exists() or "zombie" in (proc / "status").read_text(), "tritonserver outlived its parent"
    shutil.rmtree(root)  # what the killed parent could not remove


def test_the_gguf_tokenizer_tokenizes_as_llama_cpp(triton_server: ServerHandle) -> None:
    from llama_cpp import Llama

    assert triton_server.tokenizer is not None
    ours = LocalTokenizer(triton_server.tokenizer)
    llama = Llama(model_path=str(model_path()), vocab_only=True, verbose=False)
    for text in STRINGS:
        assert ours.encode(text) == llama.tokenize(text.encode(), add_bos=False, special=True), text
        assert ours.decode(ours.encode(text)) == text
    assert ours.chat_template is not None and "<|im_start|>" in ours.chat_template
    rendered = ours.render([{"role": "user", "content": "2+2?"}], None)
    assert rendered.endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_mrsa_backend_kind_triton_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
    log = tmp_path / "backend.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mrsa", "backend", "--kind", "triton", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "COLUMNS": "400"},
        )
    try:
        deadline = time.monotonic() + 120
        while "ready at" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert f"--backend http://127.0.0.1:{port} --backend-kind triton" in log.read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).status_code == 200
        children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        repo = next(
            a
            for a in Path(f"/proc/{children[0]}/cmdline").read_text().split("\0")
            if "--model-repository" in a
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()
    assert "stopped" in log.read_text()
    assert not Path(repo.split("=", 1)[1]).exists()  # the model repository was removed
    assert (
        not Path(f"/proc/{children[0]}").exists()
        or "zombie" in Path(f"/proc/{children[0]}/status").read_text()
    )
