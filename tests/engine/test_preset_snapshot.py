"""The presets send exactly the requests they sent before the final-stage, summary and head knobs
existed: every request of a whole job (prompt, prefill, budget, sampling, seed), in order of
(round, index, chunk), hashed and compared with a snapshot recorded from the code before them.

The snapshot (``tests/snapshots/preset_requests.json``) was written by :func:`snapshot` run on
commit eb9f4f3 (``python -m tests.engine.test_preset_snapshot`` in a checkout of it, with this file copied
in); it uses only what both versions have. Regenerate it only for a deliberate change of a
preset's protocol.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from mrsa.backends.base import GenerationRequest
from mrsa.domain import JobSpec, JobStatus
from mrsa.params import RSAParams, resolve_params
from mrsa.store.memory import MemoryStore
from tests.fakes import FakeBackend
from workers.inprocess import InProcessRunner
from workers.loop import WorkerOptions

SNAPSHOT = Path(__file__).parents[1] / "snapshots" / "preset_requests.json"
PROBLEM = "Let $x$ be the number with $2x + 3 = 87$. Find $x$."

# (name, preset, overrides): the four presets as they are, and two variants whose requests must
# not change either (the aggregate selection call; Delethink chunks with the head switched off).
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("zaya1", "zaya1", {}),
    ("zaya1-extra-high", "zaya1-extra-high", {}),
    ("rsa-paper", "rsa-paper", {}),
    ("smoke", "smoke", {}),
    ("smoke-aggregate", "smoke", {"selection": "aggregate"}),
    ("smoke-chunked", "smoke", {"chunk": 40, "carryover": 12, "head": 0, "rounds": 2}),
]


def answer_script(request: GenerationRequest) -> str:
    """Text that depends on where the request comes from, long enough to be cut by small budgets."""
    tag = request.tag
    words = " ".join(f"w{n}" for n in range(int(tag.get("index", 0)) % 5 * 7 + 5))
    return f"Round {tag.get('round')} candidate {tag.get('index')}: {words} so \\boxed{{{42 + int(tag['index']) % 3}}}"


def _params(preset: str, overrides: dict[str, Any]) -> RSAParams:
    known = {k: v for k, v in overrides.items() if k in RSAParams.model_fields}  # older code: no head
    return resolve_params(preset, known)


async def preset_requests(preset: str, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """Every request one job of ``preset`` sends to a fake backend, in (round, index, chunk) order."""
    backend = FakeBackend(answer_script)
    options = WorkerOptions(block_ms=20, cancel_check_s=0.01, heartbeat_s=0.05, backend_hold_s=0.0)
    async with InProcessRunner(backend, MemoryStore(), capacity=4, options=options) as runner:
        spec = JobSpec(problem=PROBLEM, params=_params(preset, overrides), model="fake")
        result = await asyncio.wait_for(runner.solve(spec), 60)
    assert result.status == JobStatus.succeeded, result.error
    requests = [c.request for c in backend.calls]
    requests.sort(
        key=lambda r: (
            str(r.tag.get("kind", "")),
            int(r.tag["round"]),
            int(r.tag["index"]),
            int(r.tag["chunk"]),
        )
    )
    return [
        {
            "tag": {k: r.tag[k] for k in sorted(r.tag) if k != "job"},  # job ids are random
            "messages": [m.model_dump() for m in r.messages],
            "prefill": r.prefill,
            "max_tokens": r.max_tokens,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "top_k": r.top_k,
            "seed": r.seed,
            "model": r.model,
        }
        for r in requests
    ]


def digest(requests: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(requests, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


async def snapshot() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, preset, overrides in CASES:
        requests = await preset_requests(preset, overrides)
        out[name] = {"requests": len(requests), "sha256": digest(requests), "last": requests[-1]}
    return out


async def test_presets_send_the_requests_they_sent_before() -> None:
    recorded = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert set(recorded) == {name for name, _, _ in CASES}
    for name, preset, overrides in CASES:
        requests = await preset_requests(preset, overrides)
        assert len(requests) == recorded[name]["requests"], name
        assert requests[-1] == recorded[name]["last"], name  # a readable diff for the last request
        assert digest(requests) == recorded[name]["sha256"], name


if __name__ == "__main__":
    json.dump(asyncio.run(snapshot()), sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")
