"""The bundled Triton's own promises: a server that cannot start says why with its log, it dies with
its parent, and the tokenizer built from the GGUF tokenizes as llama.cpp does."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mrsa.backends.bundled_triton import TritonServer, TritonUnavailable
from mrsa.backends.embedded import model_path
from mrsa.backends.triton import LocalTokenizer
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
        "from mrsa.backends.bundled_triton import TritonServer\n"
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
    finally:
        parent.send_signal(signal.SIGKILL)  # no cleanup code of ours runs
        parent.wait(timeout=30)
    deadline = time.monotonic() + 60
    proc = Path(f"/proc/{server_pid}")
    while proc.exists() and "zombie" not in (proc / "status").read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not proc.exists() or "zombie" in (proc / "status").read_text(), "tritonserver outlived its parent"


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
