"""A Triton Python-backend model with the wire of Triton's **vLLM backend**, generating with
llama-cpp-python: the model of the bundled Triton (:mod:`mrsa.servers.bundled_triton` copies this
file to ``<repository>/<model>/1/model.py``). It runs inside tritonserver's Python-backend stub, in
the bundled Triton environment — not in mrsa's — so it imports nothing from mrsa.

Inputs (all ``dims: [1]``, decoupled, ``max_batch_size: 0``, as the vLLM backend declares them):
``text_input`` (the raw prompt: special tokens such as ``<|im_start|>`` are parsed),
``stream``, ``sampling_parameters`` (a JSON *string* of vLLM ``SamplingParams`` fields),
``exclude_input_in_output``, ``return_finish_reason``, ``return_num_input_tokens``,
``return_num_output_tokens`` (``return_cumulative_logprob``/``return_logprobs`` are accepted and
refused when true: llama.cpp's sampler gives no log-probabilities here). Outputs: ``text_output``,
``finish_reason`` (``"stop"``/``"length"``; ``"None"`` on a stream's unfinished chunks, as vLLM's
``str(None)``), ``num_input_tokens``, ``num_output_tokens``.

Like the vLLM backend, a failure is answered ``Error generating stream: <reason>`` with Triton's
default error code. Requests run one at a time on a worker thread (one llama.cpp context); beyond
``max_queued`` waiting requests the model answers ``UNAVAILABLE`` "busy … try again" at once,
rather than letting a backlog grow without bound.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from llama_cpp import Llama

# vLLM SamplingParams fields this model honours, with llama-cpp-python's argument names.
_SAMPLING = {
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repeat_penalty",
}
# Accepted without effect: the text llama.cpp returns holds no special token but the
# end-of-generation ones, which end the generation anyway.
_NO_EFFECT = {"skip_special_tokens", "spaces_between_special_tokens"}
_VLLM_DEFAULT_MAX_TOKENS = 16


class RequestError(ValueError):
    """A request the model refuses (answered like the vLLM backend: ``Error generating stream: …``)."""


def _input(request: Any, name: str) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    return tensor.as_numpy().reshape(-1)[0]


def _flag(request: Any, name: str) -> bool | None:
    value = _input(request, name)
    return None if value is None else bool(value)


def sampling_arguments(text: str | None) -> tuple[dict[str, Any], int]:
    """llama-cpp-python keyword arguments (and ``n``) from the ``sampling_parameters`` JSON string,
    checked the way vLLM checks them."""
    raw: Any = {}
    if text:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise RequestError(f"sampling_parameters is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise RequestError("sampling_parameters must be a JSON object")
    params = {k: v for k, v in raw.items() if v is not None}
    unknown = sorted(set(params) - set(_SAMPLING) - _NO_EFFECT - {"n"})
    if unknown:
        raise RequestError(f"unknown sampling parameter(s): {', '.join(unknown)}")
    args: dict[str, Any] = {
        "max_tokens": _VLLM_DEFAULT_MAX_TOKENS,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "repeat_penalty": 1.0,
    }
    for key, value in params.items():
        if key in _SAMPLING:
            args[_SAMPLING[key]] = value
    try:
        args["max_tokens"] = int(args["max_tokens"])
        args["temperature"] = float(args["temperature"])
        args["top_p"] = float(args["top_p"])
        args["top_k"] = int(args["top_k"])
        if args.get("seed") is not None:
            args["seed"] = int(args["seed"])
        n = int(params.get("n", 1))
    except (TypeError, ValueError) as exc:
        raise RequestError(f"sampling_parameters: wrong type: {exc}") from exc
    if args["max_tokens"] < 1:
        raise RequestError(f"max_tokens must be at least 1, got {args['max_tokens']}.")
    if args["temperature"] < 0:
        raise RequestError(f"temperature must be non-negative, got {args['temperature']}.")
    if not 0 < args["top_p"] <= 1:
        raise RequestError(f"top_p must be in (0, 1], got {args['top_p']}.")
    if args["top_k"] < -1:
        raise RequestError(f"top_k must be -1 (disable), or at least 1, got {args['top_k']}.")
    if n < 1:
        raise RequestError(f"n must be at least 1, got {n}.")
    args["top_k"] = max(0, args["top_k"])  # vLLM's -1 (off) is llama.cpp's 0
    if isinstance(args.get("stop"), str):
        args["stop"] = [args["stop"]]
    return args, n


class TritonPythonModel:
    """The model (Triton instantiates it once per model instance)."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.n_ctx = int(params["n_ctx"])
        threads = int(params["n_threads"])
        self.max_queued = int(params["max_queued"])
        self.logger = pb_utils.Logger
        self.llm = Llama(
            model_path=params["gguf"],
            n_ctx=self.n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self._lock = threading.Lock()
        self._queued = 0
        self._work: queue.Queue[tuple[Any, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="generate", daemon=True)
        self._thread.start()

    # -- requests ----------------------------------------------------------------------------------

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            with self._lock:
                busy = self._queued >= self.max_queued
                if not busy:
                    self._queued += 1
            if busy:
                error = pb_utils.TritonError(
                    f"engine busy: {self.max_queued} requests already queued; try again later",
                    pb_utils.TritonError.UNAVAILABLE,
                )
                sender.send(
                    pb_utils.InferenceResponse(error=error),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                continue
            self._work.put((request, sender))
        return None

    def _loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            request, sender = item
            try:
                self._serve(request, sender)
            except Exception as exc:  # answered, as the vLLM backend does, with the reason
                self.logger.log_error(f"[llama.cpp] Error generating stream: {exc!r}")
                text = pb_utils.Tensor("text_output", np.asarray(["N/A"], dtype=np.object_))
                response = pb_utils.InferenceResponse(
                    output_tensors=[text], error=pb_utils.TritonError(f"Error generating stream: {exc}")
                )
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            finally:
                with self._lock:
                    self._queued -= 1

    def _serve(self, request: Any, sender: Any) -> None:
        prompt_value = _input(request, "text_input")
        prompt = prompt_value.decode("utf-8") if isinstance(prompt_value, bytes) else str(prompt_value)
        stream = bool(_flag(request, "stream"))
        exclude = _flag(request, "exclude_input_in_output")
        prepend = (not exclude) if exclude is not None else not stream
        if prepend and stream:
            raise RequestError("When streaming, `exclude_input_in_output` = False is not allowed.")
        for unsupported in ("return_cumulative_logprob", "return_logprobs"):
            if _flag(request, unsupported):
                raise RequestError(f"{unsupported} is not supported by this model")
        wanted = {
            name: bool(_flag(request, f"return_{name}"))
            for name in ("finish_reason", "num_input_tokens", "num_output_tokens")
        }
        parameters = _input(request, "sampling_parameters")
        if isinstance(parameters, bytes):
            parameters = parameters.decode("utf-8")
        args, n = sampling_arguments(parameters)
        prompt_ids = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if len(prompt_ids) >= self.n_ctx:
            raise RequestError(
                f"The decoder prompt (length {len(prompt_ids)}) is longer than the maximum model length "
                f"of {self.n_ctx}. Make sure that `max_model_len` is no smaller than the number of text tokens."
            )
        if stream:
            self._stream(prompt, args, len(prompt_ids), wanted, sender)
            return
        texts: list[str] = []
        reasons: list[str] = []
        counts: list[int] = []
        for i in range(n):
            choice_args = dict(args)
            if n > 1 and args.get("seed") is not None:
                choice_args["seed"] = args["seed"] + i
            out: Any = self.llm.create_completion(prompt=prompt, stream=False, **choice_args)
            choice = out["choices"][0]
            texts.append((prompt if prepend else "") + choice["text"])
            reasons.append(str(choice["finish_reason"]))
            counts.append(int(out["usage"]["completion_tokens"]))
        response = self._response(texts, reasons, len(prompt_ids), counts, wanted)
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _stream(
        self, prompt: str, args: dict[str, Any], n_in: int, wanted: dict[str, bool], sender: Any
    ) -> None:
        """One response per piece of text (a token, or several when llama.cpp holds back bytes of an
        unfinished character or a possible stop string), the finish reason on the last one."""
        last: Any = None
        chunks: Any = self.llm.create_completion(prompt=prompt, stream=True, **args)
        for chunk in chunks:
            if sender.is_cancelled():
                sender.send(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError("Request was cancelled", pb_utils.TritonError.CANCELLED)
                    ),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                return
            if last is not None:
                sender.send(self._response([last["text"]], ["None"], n_in, [1], wanted), flags=0)
            last = chunk["choices"][0]
        if last is None:
            last = {"text": "", "finish_reason": "stop"}
        response = self._response([last["text"]], [str(last["finish_reason"])], n_in, [1], wanted)
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    @staticmethod
    def _response(
        texts: list[str], reasons: list[str], n_in: int, counts: list[int], wanted: dict[str, bool]
    ) -> Any:
        tensors = [
            pb_utils.Tensor("text_output", np.asarray([t.encode("utf-8") for t in texts], dtype=np.object_))
        ]
        if wanted["finish_reason"]:
            tensors.append(pb_utils.Tensor("finish_reason", np.asarray(reasons, dtype=np.object_)))
        if wanted["num_input_tokens"]:
            tensors.append(pb_utils.Tensor("num_input_tokens", np.asarray([n_in], dtype=np.uint32)))
        if wanted["num_output_tokens"]:
            tensors.append(pb_utils.Tensor("num_output_tokens", np.asarray(counts, dtype=np.uint32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        self._work.put(None)
        self._thread.join(timeout=30)
