"""``python -m mrsa.servers.env_locks --refresh``: write the bundled servers' environment locks
anew (``make lock``). Each is built from its unpinned steps in a scratch folder and frozen (see
:func:`mrsa.servers.bundled_envs.relock`); minutes each, the vLLM one downloads ~3 GB."""

from __future__ import annotations

import argparse
import sys

from mrsa.servers.bundled_envs import EnvSpec, relock
from mrsa.servers.bundled_triton import triton_env_spec
from mrsa.servers.bundled_vllm import VLLM_ENV


def locked_specs() -> tuple[EnvSpec, ...]:
    """Every bundled server environment that has a committed lock."""
    return (triton_env_spec(), VLLM_ENV)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mrsa.servers.env_locks", description=__doc__)
    parser.add_argument("--refresh", action="store_true", help="rebuild and rewrite every lock")
    parser.add_argument("names", nargs="*", help="only these environments (default: all)")
    args = parser.parse_args(argv)
    specs = [spec for spec in locked_specs() if not args.names or spec.name in args.names]
    for spec in specs:
        if args.refresh:
            relock(spec, lambda message: print(message, file=sys.stderr, flush=True))
        print(f"{spec.name}: {spec.lock}")


if __name__ == "__main__":
    main()
