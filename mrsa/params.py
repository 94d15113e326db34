"""The validated knobs of Markovian RSA: sampling, algorithm parameters and named presets.

Everything a user can set is a field of :class:`RSAParams` (or of a group in it, such as
``sampling``) with a description and limits. The other surfaces are derived from those fields, so a new
knob is one edit here: the CLI's flags (:func:`mrsa.cli.options.rsa_flags`), the REST API's overrides
(:data:`mrsa.api.schemas.ParamOverrides`) and the chat request's extra fields
(:data:`mrsa.api.chat.schemas.ChatCompletionRequest`). The flat surfaces (flags, chat fields) name
a group's fields on their own (``--temperature``); :func:`knobs` and :func:`nest_overrides` are the one
place that flattens and nests them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

TailSource = Literal["trace", "reasoning", "answer_or_tail"]
Selection = Literal["majority", "aggregate", "population"]
TailMode = Literal["truncate", "summarize"]

# Upper limits: generous for real use, tight enough that a typo (an extra zero) is caught early.
MAX_POPULATION = 512
MAX_SUBSET = 64
MAX_ROUNDS = 64
MAX_BUDGET = 1_048_576


class SamplingParams(BaseModel):
    """Sampling settings passed to the inference server for every candidate."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, ge=0.0, le=5.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(-1, ge=-1, description="Top-k cut-off; -1 disables it.")


class RSAParams(BaseModel):
    """Parameters of one Markovian RSA run (docs/design.md#the-algorithm)."""

    model_config = ConfigDict(extra="forbid")

    population: int = Field(16, ge=1, le=MAX_POPULATION, description="N: candidates per round.")
    subset: int = Field(
        4, ge=1, le=MAX_SUBSET, description="K: candidate tails shown in one aggregation prompt."
    )
    rounds: int = Field(
        2, ge=0, le=MAX_ROUNDS, description="T: aggregation rounds after round 0 (T+1 generation stages)."
    )
    budget: int = Field(40960, ge=1, le=MAX_BUDGET, description="β: max decode tokens of one candidate.")
    tail: int = Field(
        4096, ge=1, le=MAX_BUDGET, description="τ: model tokens of each candidate carried forward."
    )
    chunk: int | None = Field(
        None,
        ge=1,
        le=MAX_BUDGET,
        description="Delethink chunk: max generated tokens held in one request's context (off when unset).",
    )
    carryover: int | None = Field(
        None,
        ge=0,
        le=MAX_BUDGET,
        description="Tokens of its own output a chunked candidate continues from "
        "(default: min(512, chunk // 2)).",
    )
    head: int = Field(
        100,
        ge=0,
        le=MAX_BUDGET,
        description="Delethink head: the first tokens of a chunked candidate's first chunk, kept in "
        "every continuation before the last carryover tokens (0: carry-over only).",
    )
    tail_source: TailSource = Field(
        "trace",
        description="What the tail is cut from: the raw trace, the reasoning only, or the answer when "
        "finished else the reasoning tail.",
    )
    tail_mode: TailMode = Field(
        "truncate",
        description="How the tail is made from that text: its last τ tokens (truncate), or a summary "
        "the model writes in at most summary_budget tokens (summarize: one more call per candidate).",
    )
    summary_budget: int = Field(
        4096, ge=1, le=MAX_BUDGET, description="Max decode tokens of one tail summary (tail_mode summarize)."
    )
    selection: Selection = Field("majority", description="How the final answer is chosen after round T.")
    aggregate_temperature: float = Field(
        0.6, ge=0.0, le=5.0, description="Temperature of the final aggregation call (selection 'aggregate')."
    )
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    final_population: int | None = Field(
        None,
        ge=1,
        le=MAX_POPULATION,
        description="N of the last generation stage (round T; round 0 when T=0); unset: population.",
    )
    final_budget: int | None = Field(
        None, ge=1, le=MAX_BUDGET, description="β of the last generation stage; unset: budget."
    )
    final_temperature: float | None = Field(
        None, ge=0.0, le=5.0, description="Temperature of the last generation stage; unset: temperature."
    )
    final_top_p: float | None = Field(
        None, gt=0.0, le=1.0, description="Nucleus mass of the last generation stage; unset: top_p."
    )
    final_top_k: int | None = Field(
        None, ge=-1, description="Top-k of the last generation stage (-1 disables it); unset: top_k."
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Job seed: every random choice derives from it.")
    prompts: str = Field(
        "v1",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Prompt template set (prompts/NAME): v1, or pacore (the tails as reference responses; "
        "pair it with tail_source answer_or_tail).",
    )
    islands: int = Field(
        1,
        ge=1,
        le=MAX_POPULATION,
        description="M: islands the population is split into (a power of two dividing N, K ≤ N/M, "
        "log2(M) ≤ T); aggregation draws parents within a candidate's island, and islands merge in "
        "pairs at phase boundaries until one is left. 1 = no islands.",
    )
    stop_agreement: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Adaptive compute: stop after a round (≥ stop_min_round) in which at least this share "
        "of the finished candidates agree on one answer (off when unset).",
    )
    stop_min_round: int = Field(
        1,
        ge=0,
        le=MAX_ROUNDS,
        description="Adaptive compute: the first round after which a job may stop early.",
    )
    stop_max_truncated: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Adaptive compute: a round counts as converged only if at most this share of its "
        "candidates was truncated at the budget.",
    )
    token_budget: int | None = Field(
        None,
        ge=1,
        description="Adaptive compute: decode tokens a job may spend; it stops before an aggregation round "
        "that would exceed it, projecting the last round's decode tokens (off when unset).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RSAParams:
        if self.subset > self.population:
            raise ValueError(
                f"subset: K={self.subset} must be ≤ population N={self.population} "
                "(tails are drawn without replacement within a prompt)"
            )
        if self.tail > self.budget:
            raise ValueError(f"tail: τ={self.tail} must be ≤ budget β={self.budget}")
        if self.carryover is None:
            self.carryover = min(512, self.chunk // 2) if self.chunk is not None else 512
        if self.chunk is not None:
            if self.carryover >= self.chunk:
                raise ValueError(f"carryover: {self.carryover} must be < chunk {self.chunk}")
            if self.chunk > self.budget:
                raise ValueError(f"chunk: {self.chunk} must be ≤ budget β={self.budget}")
        last = self.stage_population(self.rounds)
        if self.selection == "aggregate" and self.subset > last:
            raise ValueError(
                f"final_population: N={last} of the last stage must be ≥ subset K={self.subset} "
                "(selection 'aggregate' draws K of its tails)"
            )
        self._check_islands()
        if self.stop_min_round > self.rounds and self.stop_agreement is not None:
            raise ValueError(
                f"stop_min_round: {self.stop_min_round} must be ≤ rounds T={self.rounds} "
                "(the job could never stop early)"
            )
        return self

    def _check_islands(self) -> None:
        """The constraints of the islands schedule (:mod:`mrsa.engine.islands`)."""
        m, n = self.islands, self.population
        if m == 1:
            return
        if m & (m - 1):
            raise ValueError(f"islands: M={m} must be a power of two (islands merge in pairs)")
        if n % m:
            raise ValueError(f"islands: population N={n} must be divisible by M={m}")
        if self.subset > n // m:
            raise ValueError(
                f"islands: subset K={self.subset} must be ≤ N/M={n // m} (parents are drawn within an island)"
            )
        if m.bit_length() - 1 > self.rounds:
            raise ValueError(
                f"islands: log2(M)={m.bit_length() - 1} must be ≤ rounds T={self.rounds} "
                "(one merge per phase boundary, and T+1 stages make at most T+1 phases)"
            )

    @property
    def adaptive(self) -> bool:
        """Whether the job may stop early (converged, or its token budget): then each round is planned
        only once the previous one is complete, so a stop saves the whole next round."""
        return self.stop_agreement is not None or self.token_budget is not None

    @property
    def stages(self) -> int:
        """Generation stages: round 0 plus T aggregation rounds."""
        return self.rounds + 1

    def is_last_stage(self, round_index: int) -> bool:
        """Whether ``round_index`` is the last generation stage (round T)."""
        return round_index == self.rounds

    def stage_population(self, round_index: int) -> int:
        """Candidates of round ``round_index``: ``final_population`` for the last stage when set."""
        if self.is_last_stage(round_index) and self.final_population is not None:
            return self.final_population
        return self.population

    def stage_budget(self, round_index: int) -> int:
        """Decode budget of one candidate of round ``round_index`` (``final_budget`` for the last)."""
        if self.is_last_stage(round_index) and self.final_budget is not None:
            return self.final_budget
        return self.budget

    def stage_sampling(self, round_index: int) -> SamplingParams:
        """Sampling of round ``round_index``: the last stage's ``final_*`` values over the population's."""
        if not self.is_last_stage(round_index):
            return self.sampling
        final = {
            "temperature": self.final_temperature,
            "top_p": self.final_top_p,
            "top_k": self.final_top_k,
        }
        return self.sampling.model_copy(update={k: v for k, v in final.items() if v is not None})

    @property
    def total_candidates(self) -> int:
        """Candidates of all generation stages (the selection call not counted)."""
        return sum(self.stage_population(r) for r in range(self.stages))

    @property
    def head_tokens(self) -> int:
        """The Delethink head actually kept: at most the first chunk (0 when unchunked)."""
        return min(self.head, self.chunk) if self.chunk is not None else 0

    @property
    def carryover_tokens(self) -> int:
        """The resolved carry-over (the validator fills the default in)."""
        return self.carryover if self.carryover is not None else 0

    @property
    def request_tokens(self) -> int:
        """The most decode tokens one request may hold in its context (chunk, else the larger of the
        stages' budgets)."""
        most = max(self.budget, self.stage_budget(self.rounds))
        return min(self.chunk, most) if self.chunk is not None else most


def group_model(field: FieldInfo) -> type[BaseModel] | None:
    """The model of a field that groups knobs (``sampling``), else None."""
    kind = field.annotation
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def knobs(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """Every knob of ``model`` by its flat name, in field order, with a group's fields in the group's
    place (``sampling`` becomes ``temperature``, ``top_p``, ``top_k``)."""
    out: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        group = group_model(field)
        leaves = group.model_fields if group is not None else {name: field}
        for flat, leaf in leaves.items():
            if flat in out:
                raise TypeError(f"{model.__name__}: knob {flat!r} is defined twice")
            out[flat] = leaf
    return out


def nest_overrides(flat: Mapping[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """Flat knob values (as :func:`knobs` names them) as overrides of ``model``'s fields for
    :func:`resolve_params`: a group's values under the group's name. Unset (None) values are left out."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        group = group_model(field)
        if group is None:
            if flat.get(name) is not None:
                out[name] = flat[name]
            continue
        values = {k: flat[k] for k in group.model_fields if flat.get(k) is not None}
        if values:
            out[name] = values
    return out


PRESETS: dict[str, dict[str, Any]] = {
    "zaya1": {
        "population": 16,
        "subset": 4,
        "rounds": 2,
        "budget": 40960,
        "tail": 4096,
        "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": -1},
    },
    "zaya1-extra-high": {
        "population": 32,
        "subset": 4,
        "rounds": 8,
        "budget": 32768,
        "tail": 4096,
        "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": -1},
    },
    "rsa-paper": {
        "population": 16,
        "subset": 4,
        "rounds": 9,
        "budget": 8192,
        "tail": 8192,
        "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": -1},
    },
    # Tiny, for the embedded SmolLM2-135M on a CPU (8192-token context) and for tests:
    # |q| + K·τ + β stays far inside the context and a run takes seconds.
    "smoke": {
        "population": 4,
        "subset": 2,
        "rounds": 1,
        "budget": 96,
        "tail": 48,
        "sampling": {"temperature": 0.8, "top_p": 0.95, "top_k": 40},
    },
}
DEFAULT_PRESET = "zaya1"


class UnknownPresetError(ValueError):
    """A preset name that is not in :data:`PRESETS`."""

    def __init__(self, name: str) -> None:
        super().__init__(f"preset: unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
        self.name = name


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_params(preset: str | None = None, overrides: dict[str, Any] | None = None) -> RSAParams:
    """Build :class:`RSAParams` from a preset plus overrides (``None`` values are ignored).

    Raises :class:`UnknownPresetError` or pydantic's ``ValidationError``.
    """
    name = preset or DEFAULT_PRESET
    if name not in PRESETS:
        raise UnknownPresetError(name)
    return RSAParams.model_validate(_merge(PRESETS[name], overrides or {}))


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the field and the reason, for CLI messages."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(msg if not loc or msg.startswith(loc.split(".")[-1] + ":") else f"{loc}: {msg}")
    return "; ".join(parts)
