"""Zyphra's RSA proxy request fields, mapped onto mrsa's knobs: the one table.

Zyphra's vLLM fork ships an OpenAI-compatible RSA proxy (``examples/online_serving`` and
``examples/markovian_rsa/rsa_proxy_server.py``). Its clients send RSA settings as extra chat body
fields with its own names (``rsa_n``, ``rsa_t``, ``short_resp_len``…) and eval-style aliases
(``rsa_short_resp_len``…). :data:`PROXY_FIELDS` lists every one of them with what it sets here;
the chat request model declares them (:func:`mrsa.api.chat.schemas.chat_request_model`),
:func:`proxy_overrides` turns their values into knob values, and docs/zyphra-proxy.md shows the
table (a test checks that every name below appears there).

``rsa_t`` and our ``rounds`` count the same thing: aggregation steps after the first population,
so both run ``T + 1`` generation stages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# knob: sets RSAParams knobs; response: shapes the answer; no_effect: accepted and ignored;
# rejected: a 422 (mrsa has no such freedom, and silently ignoring it would change results).
Kind = Literal["knob", "response", "no_effect", "rejected"]


@dataclass(frozen=True)
class ProxyField:
    """One proxy request field: its name, the aliases the proxy accepts, and what it sets here."""

    name: str
    aliases: tuple[str, ...]
    kind: Kind
    value_type: type
    targets: tuple[str, ...]
    ours: str

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


PROXY_FIELDS: tuple[ProxyField, ...] = (
    ProxyField("rsa_n", (), "knob", int, ("population",), "N, the population of every stage."),
    ProxyField("rsa_k", (), "knob", int, ("subset",), "K, candidates shown in one aggregation prompt."),
    ProxyField(
        "rsa_t",
        (),
        "knob",
        int,
        ("rounds",),
        "T, aggregation rounds after the first population (T+1 stages, as in the proxy). "
        "`rsa_t: 0` is passed through to the backend, as the proxy does.",
    ),
    ProxyField(
        "rsa_final_n",
        ("final_aggregation_prompts",),
        "knob",
        int,
        ("final_population",),
        "Candidates of the last stage; 0 means N, as in the proxy.",
    ),
    ProxyField(
        "short_resp_len",
        ("rsa_short_resp_len",),
        "knob",
        int,
        ("budget",),
        "β of every stage but the last; `max_tokens` then becomes the last stage's budget "
        "(`final_budget`), as the proxy does.",
    ),
    ProxyField(
        "tail_window_len",
        ("rsa_tail_window_len",),
        "knob",
        int,
        ("tail",),
        "τ, counted in model tokens (the proxy counts whitespace-separated words).",
    ),
    ProxyField(
        "rsa_tail_window",
        ("rsa_use_tail_window",),
        "knob",
        bool,
        ("tail",),
        "`false` carries whole candidates (τ = β). `true` is the default here and in the proxy.",
    ),
    ProxyField(
        "rsa_summarize",
        ("summarize",),
        "knob",
        bool,
        ("tail_mode",),
        "`tail_mode: summarize` (else `truncate`); the summary prompt is a versioned template of the "
        "prompt set and the summary bounded by `summary_budget` tokens.",
    ),
    ProxyField(
        "use_pacore",
        ("rsa_use_pacore",),
        "knob",
        bool,
        ("prompts", "tail_source"),
        "The `pacore` prompt set with `tail_source: answer_or_tail` (a finished candidate's answer, "
        "else its reasoning tail), as the proxy extracts for PaCoRe.",
    ),
    ProxyField(
        "final_temperature",
        ("rsa_final_temperature",),
        "knob",
        float,
        ("final_temperature",),
        "Temperature of the last stage. Unset keeps the population's (the proxy defaults to 0.6).",
    ),
    ProxyField(
        "final_top_p",
        ("rsa_final_top_p",),
        "knob",
        float,
        ("final_top_p",),
        "Top-p of the last stage. Unset keeps the population's (the proxy defaults to 0.95).",
    ),
    ProxyField(
        "final_top_k",
        ("rsa_final_top_k",),
        "knob",
        int,
        ("final_top_k",),
        "Top-k of the last stage. Unset keeps the population's (the proxy defaults to 40).",
    ),
    ProxyField(
        "summary_prompt",
        ("rsa_summary_prompt",),
        "rejected",
        str,
        (),
        "Refused (422): summary prompts are versioned templates of a prompt set (`prompts`), so a "
        "run is reproducible from its parameters.",
    ),
    ProxyField(
        "return_aggregation_prompt",
        ("rsa_return_aggregation_prompt",),
        "response",
        bool,
        (),
        "Adds `aggregation_prompt`: the messages of the first last-stage aggregation prompt.",
    ),
    ProxyField(
        "return_rsa_metadata",
        ("rsa_return_metadata",),
        "response",
        bool,
        (),
        "Adds `rsa_metadata` (default true, as in the proxy); `mrsa` is always there.",
    ),
    ProxyField(
        "rsa_max_concurrency",
        (),
        "no_effect",
        int,
        (),
        "Accepted, no effect: how many requests run at once is the workers' setting "
        "(`MRSA_BACKEND_CONCURRENCY`).",
    ),
    ProxyField("rsa_debug", (), "no_effect", bool, (), "Accepted, no effect: see the job's events."),
)

BY_NAME: dict[str, ProxyField] = {name: f for f in PROXY_FIELDS for name in f.names}
RESPONSE_DEFAULTS = {"return_aggregation_prompt": False, "return_rsa_metadata": True}


class ProxyFieldConflict(ValueError):
    """Two names for one setting with different values; the message names both."""


def fold_aliases(given: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The proxy fields among ``given`` (None = absent) by canonical name, and the name each was
    sent under. Two names of one field with different values raise :class:`ProxyFieldConflict`."""
    values: dict[str, Any] = {}
    sent_as: dict[str, str] = {}
    for name, value in given.items():
        field = BY_NAME.get(name)
        if field is None or value is None:
            continue
        if field.name in values and values[field.name] != value:
            first = sent_as[field.name]
            raise ProxyFieldConflict(
                f"{name}: {value!r} conflicts with {first}: {values[field.name]!r} (two names of one setting)"
            )
        values[field.name] = value
        sent_as[field.name] = name
    return values, sent_as


def proxy_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat knob values (:func:`mrsa.params.knobs` names) for folded proxy ``values``.

    ``rsa_tail_window: false`` is left to the caller (τ = β needs the resolved budget)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        field = BY_NAME[name]
        if field.kind != "knob" or name == "rsa_tail_window":
            continue
        if name == "rsa_final_n":
            out["final_population"] = value if value > 0 else None
        elif name == "rsa_summarize":
            out["tail_mode"] = "summarize" if value else "truncate"
        elif name == "use_pacore":
            if value:
                out["prompts"] = "pacore"
                out["tail_source"] = "answer_or_tail"
        else:
            (target,) = field.targets
            out[target] = value
    return out
