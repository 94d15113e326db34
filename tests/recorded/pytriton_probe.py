"""Record what PyTriton itself (not a bare tritonserver) answers to model discovery, into
``tests/recorded/triton/pytriton_*.json``. Runs with the bundled Triton environment's interpreter
(PyTriton is not in mrsa's own environment)::

    LD_LIBRARY_PATH=<env python's LIBDIR> PATH=<env>/bin:$PATH <env>/bin/python -I tests/recorded/pytriton_probe.py OUT_DIR

It binds a one-tensor echo model with PyTriton's defaults and asks the endpoints mrsa's discovery
uses: PyTriton restricts the repository and statistics APIs (403), model readiness stays open.
"""

import json
import sys
from pathlib import Path

import requests
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

PORT = 18600


@batch
def echo(text_input):  # type: ignore[no-untyped-def]
    return {"text_output": text_input}


def main(out: Path) -> None:
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=PORT,
        grpc_address="127.0.0.1",
        grpc_port=PORT + 1,
        metrics_port=PORT + 2,
    )
    cases = {
        "index": ("POST", "/v2/repository/index", {"ready": True}),
        "stats": ("GET", "/v2/models/stats", None),
        "ready": ("GET", "/v2/models/echo/ready", None),
    }
    with Triton(config=config) as triton:
        triton.bind(
            model_name="echo",
            infer_func=echo,
            inputs=[Tensor(name="text_input", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="text_output", dtype=bytes, shape=(1,))],
            config=ModelConfig(max_batch_size=8),
        )
        triton.run()
        for name, (method, path, body) in cases.items():
            reply = requests.request(method, f"http://127.0.0.1:{PORT}{path}", json=body, timeout=10)
            data = reply.json() if reply.content else ""
            entry = {"method": method, "path": path, "body": body, "status": reply.status_code, "reply": data}
            (out / f"pytriton_{name}.json").write_text(json.dumps(entry, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
