# Over 350 lines on purpose: every job option, its bounds and its documented source in one place (read by scripts/option_table.py).
"""Typed job configuration: one canonical, hashable config per job.

A job is (method, model, language, seed) plus its evaluation and training settings. Defaults
are PAPER.md's settings; a sweep spec overrides them. `JobConfig.job_id` is a short hash of the
canonical JSON of the resolved config, so it is stable across runs and machines and changes
exactly when a setting that can change the numbers changes.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from copsd.data.benchmarks import all_splits, benchmarks, check_language
from copsd.data.languages import canonical_code, get_language
from copsd.yaml_input import load_yaml

if TYPE_CHECKING:  # copsd.rollout imports torch: imported where sampling params are built, not here
    from copsd.rollout import SamplingParams

METHODS = ("base", "copsd", "grpo", "sft")
TRAINED_METHODS = ("copsd", "grpo", "sft")

# Settings that say where things are or how fast they run, not what is computed: they are
# kept in the config (and in MLflow) but left out of the job id.
# The rollout engine is among them: engines sample the same distribution (greedy: the same
# tokens), though from different random streams.
UNHASHED_PATHS = (
    ("eval", "data_dir"),
    ("eval", "rollout_engine"),
    ("train", "data_path"),
    ("train", "loss_chunk_size"),
    ("train", "rollout_engine"),
    ("train", "rollout_batch"),
    # memory bounds: they change how a step is split into forwards, never what it computes
    ("train", "gradient_checkpointing"),
    ("train", "max_tokens_per_forward"),
)
ENGINE_HELP = "rollout engine: auto (fast on a GPU for Llama/Qwen models, else hf) | fast | hf [copsd]"

# Where a default comes from, closing each field's description: a file of the released code
# (GitHub cisnlp/COPSD; docs/method.md compares it setting by setting), PAPER.md, or copsd's choice.
LAUNCH = "[released: run_all_opsd_*_train.sh]"  # the AfriMGSM training launch scripts
TRAINER = "[released: multilingual_opsd_trainer.py]"
GRPO_SCRIPT = "[released: multilingual_grpo_train.py]"
EVAL_SCRIPT = "[released: evaluate_math.py]"
PAPER = "[PAPER.md]"
OURS = "[copsd]"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _known(kind: str, value: str, allowed: list[str]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {kind} '{value}'; allowed: {', '.join(allowed)}")
    return value


class Decoding(_Strict):
    """Sampling settings for evaluation (PAPER.md: 12 samples, T=1.0, top_p 0.95, no top_k, 1024)."""

    n_samples: int = Field(12, ge=1, description=f"samples per problem (the k of Pass@k, Maj@k) {EVAL_SCRIPT}")
    temperature: float = Field(1.0, ge=0.0, description=f"sampling temperature; 0 = greedy {EVAL_SCRIPT}")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description=f"nucleus (top-p) mass; 1.0 = off {EVAL_SCRIPT}")
    top_k: int = Field(0, ge=0, description=f"top-k; 0 = off {EVAL_SCRIPT}")
    max_new_tokens: int = Field(1024, ge=1, description=f"decoding budget per sample, in new tokens {EVAL_SCRIPT}")

    def sampling_params(self) -> SamplingParams:
        """The rollout engines' parameters: `n_samples` samples per problem."""
        from copsd.rollout import SamplingParams

        return SamplingParams(
            n=self.n_samples,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
        )


class EvalConfig(_Strict):
    benchmark: str = Field(
        "afrimgsm", description=f"a benchmark of copsd/resources/benchmarks.yaml or a plugin's {PAPER}"
    )
    split: str = Field("test", description=f"afrimgsm: test|dev; polymath: low|medium|high|top; others: test {PAPER}")
    limit: int | None = Field(None, ge=1, description=f"evaluate only the first N problems; null = all {OURS}")
    thinking: bool = Field(
        True, description=f"open the assistant turn with <think> + the language's sentence {EVAL_SCRIPT}"
    )
    decoding: Decoding = Field(Decoding(), description=f"how evaluation samples are drawn {EVAL_SCRIPT}")
    grader: Literal["paper", "lenient"] = Field(
        "paper",
        description="paper: the released evaluation's extraction and check; lenient: copsd's (both are stored) "
        + EVAL_SCRIPT,
    )
    batch_size: int = Field(64, ge=1, description=f"sequences per generate call (changes the RNG stream) {OURS}")
    checkpoints: list[int] = Field(
        default_factory=list,
        description=f"training steps whose adapters are evaluated (trained methods); empty = the last {OURS}",
    )
    # Test-time scaling without decoding twice: a sample of budget b is the first b tokens of the
    # same sample at the full budget (same seed, same batch), so each budget is graded by cutting.
    budgets: list[int] = Field(
        default_factory=list,
        description="smaller decoding budgets also graded (test-time scaling), each < decoding.max_new_tokens " + PAPER,
    )
    data_dir: str | None = Field(None, description=f"local AfriMGSM copy (<lang>/test.tsv) {OURS}")
    rollout_engine: Literal["auto", "fast", "hf"] = Field("auto", description=ENGINE_HELP)

    @model_validator(mode="after")
    def _budgets_below_max(self) -> EvalConfig:
        top = self.decoding.max_new_tokens
        bad = [b for b in self.budgets if not 1 <= b < top]
        if bad:
            raise ValueError(
                f"budgets {bad} must be between 1 and decoding.max_new_tokens - 1 ({top - 1}): "
                "raise decoding.max_new_tokens to the largest budget"
            )
        return self

    def all_budgets(self) -> list[int]:
        """Every decoding budget graded, ascending; the last is decoding.max_new_tokens."""
        return sorted({*self.budgets, self.decoding.max_new_tokens})

    @field_validator("benchmark")
    @classmethod
    def _benchmark_known(cls, v: str) -> str:
        return _known("benchmark", v, list(benchmarks()))

    @field_validator("split")
    @classmethod
    def _split_known(cls, v: str) -> str:
        return _known("split", v, sorted(all_splits()))


class LoraSettings(_Strict):
    """LoRA on all projections, r=64, alpha=128 (PAPER.md)."""

    r: int = Field(64, ge=1, description=f"LoRA rank {LAUNCH}")
    alpha: int = Field(128, ge=1, description=f"LoRA scaling alpha (the update is scaled by alpha / r) {LAUNCH}")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description=f"dropout on the LoRA input {TRAINER}")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        description=f"the projections that get adapters (every attention and MLP one) {LAUNCH}",
    )


class TrainCommon(_Strict):
    """Optimiser and checkpointing shared by every trained method (PAPER.md defaults)."""

    lr: float = Field(5e-6, gt=0.0, description=f"peak learning rate (AdamW) {LAUNCH}")
    # The released runs set no scheduler, so transformers' default applies: linear decay from the
    # peak to 0 over max_steps, no warmup.
    lr_scheduler: Literal["linear", "constant", "cosine"] = Field(
        "linear", description=f"linear (peak -> 0 over max_steps: transformers' default) | constant | cosine {LAUNCH}"
    )
    warmup_steps: int = Field(0, ge=0, description=f"steps of linear warmup from 0 to the peak {LAUNCH}")
    max_grad_norm: float = Field(0.1, gt=0.0, description=f"gradient-norm clip {LAUNCH}")
    batch_size: int = Field(32, ge=1, description=f"prompts per optimizer step (effective batch) {LAUNCH}")
    micro_batch_size: int = Field(
        4, ge=1, description=f"prompts per forward/backward; accumulation fills the rest {LAUNCH}"
    )
    max_steps: int = Field(100, ge=1, description=f"optimizer steps of the run {LAUNCH}")
    save_steps: int = Field(5, ge=1, description=f"a checkpoint every this many steps (and at max_steps) {LAUNCH}")
    weight_decay: float = Field(0.0, ge=0.0, description=f"AdamW weight decay {LAUNCH}")
    lora: LoraSettings = Field(LoraSettings(), description=f"the LoRA adapters trained {LAUNCH}")
    data_path: str | None = Field(
        None, description=f"training JSON (local path or Hub id; {{language}} is replaced); null = bundled swa {OURS}"
    )
    val_size: int = Field(32, ge=0, description=f"training records held out (never trained on) for validation {OURS}")
    max_examples: int | None = Field(
        None,
        ge=1,
        description=f"use only the first N usable records of the data (e.g. the released 500 / 3000) {OURS}",
    )
    loss_chunk_size: int = Field(
        256, ge=0, description=f"positions per LM-head chunk in the loss (0 = direct full-logits path) {OURS}"
    )
    gradient_checkpointing: bool = Field(
        True,
        description="recompute each decoder layer in backward instead of keeping its activations; memory only "
        + LAUNCH,
    )
    max_tokens_per_forward: int = Field(
        0,
        ge=0,
        description="cap on padded tokens (sequences x longest) per forward: a micro-batch's sequences are split "
        "into sub-batches under it, gradients weighted so the step is unchanged (0 = no cap; a longer "
        f"sequence goes alone); memory only {OURS}",
    )
    rollout_engine: Literal["auto", "fast", "hf"] = Field("auto", description=ENGINE_HELP)
    rollout_batch: Literal["auto", "step", "micro"] = Field(
        "auto",
        description="sample all of a step's rollouts in one call (step: one wide decode instead of one per "
        "micro-batch; its KV cache is kept through the loss step) or one call per micro-batch (micro); auto = "
        "step with the fast engine, micro with hf. The weights do not change within a step, so both sample "
        f"the same distribution {OURS}",
    )


# The rollout sampling of the on-policy methods, declared once; each method sets its own defaults.
_BY_METHOD = "for copsd; {} for grpo"
Temperature = Annotated[
    float,
    Field(
        gt=0.0,
        description="rollout temperature; copsd also divides both models' logits by it in the loss "
        + f"{LAUNCH} {_BY_METHOD.format(PAPER)}",
    ),
]
TopP = Annotated[
    float,
    Field(
        gt=0.0, le=1.0, description=f"rollout nucleus (top-p) mass; 1.0 = off {LAUNCH} {_BY_METHOD.format(GRPO_SCRIPT)}"
    ),
]
TopK = Annotated[int, Field(ge=0, description=f"rollout top-k; 0 = off {LAUNCH} {_BY_METHOD.format(GRPO_SCRIPT)}")]


class OnPolicySettings(TrainCommon):
    """A method that samples its own rollouts during training (COPSD, GRPO); each sets the defaults."""

    temperature: Temperature
    top_p: TopP
    top_k: TopK
    max_completion_length: int = Field(
        2048, ge=1, description=f"rollout decoding budget, in new tokens {LAUNCH} {_BY_METHOD.format(OURS)}"
    )

    def sampling_params(self, n: int = 1) -> SamplingParams:
        """The rollout engines' parameters: `n` samples per prompt."""
        from copsd.rollout import SamplingParams

        return SamplingParams(
            n=n,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_completion_length,
        )


StudentThinking = Annotated[
    bool,
    Field(
        description="open the student's assistant turn with <think> + the language's sentence "
        f"{PAPER} for copsd; {GRPO_SCRIPT} for grpo; {OURS} for sft"
    ),
]


class CopsdSettings(OnPolicySettings):
    method: Literal["copsd"] = Field("copsd", description=f"the method these settings are for (set from it) {OURS}")
    temperature: Temperature = 1.1
    top_p: TopP = 0.95
    top_k: TopK = 20
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl",
        description=f"token divergence: forward_kl = KL(teacher || student) (released beta 0) | reverse_kl | jsd {LAUNCH}",
    )
    beta: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="teacher weight of the generalized JSD (divergence=jsd); as released, 0 = forward_kl, "
        f"1 = reverse_kl {OURS}",
    )
    clip: float | None = Field(0.05, description=f"cap on each vocabulary entry's divergence; null = off {TRAINER}")
    clip_mode: Literal["entry", "token_rescale"] = Field(
        "entry",
        description=f"entry: clamp each vocabulary entry (paper); token_rescale: scale a token's sum down {TRAINER}",
    )
    teacher: Literal["fixed", "live", "ema"] = Field(
        "fixed",
        description=f"teacher weights: fixed (the base model: adapters off) | live (the student) | ema {LAUNCH}",
    )
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0, description=f"decay of the teacher: ema {TRAINER}")
    include_problem_en: bool = Field(True, description=f"the teacher prompt carries the English problem {PAPER}")
    include_reference_solution_en: bool = Field(
        True, description=f"the teacher prompt carries the English reference solution {PAPER}"
    )
    student_thinking: StudentThinking = True


class GrpoSettings(OnPolicySettings):
    method: Literal["grpo"] = Field("grpo", description=f"the method these settings are for (set from it) {OURS}")
    num_generations: int = Field(8, ge=2, description=f"completions sampled per prompt (the group) {PAPER}")
    temperature: Temperature = 1.2
    top_p: TopP = 1.0
    top_k: TopK = 0
    epsilon: float = Field(0.2, gt=0.0, description=f"clip range of the surrogate ratio (TRL's default) {GRPO_SCRIPT}")
    loss_type: Literal["dapo", "grpo", "bnpo"] = Field(
        "dapo",
        description="dapo: step token mean (TRL 0.26 default, what the released script gets); "
        f"grpo: per-completion mean (OPSD's launch script); bnpo: per-micro-batch token mean {GRPO_SCRIPT}",
    )
    kl_coef: float = Field(0.0, ge=0.0, description=f"weight of the k3 KL to the base model (TRL's beta) {PAPER}")
    format_reward: float = Field(0.0, ge=0.0, description=f"reward added for a boxed answer {GRPO_SCRIPT}")
    student_thinking: StudentThinking = True


class SftSettings(TrainCommon):
    method: Literal["sft"] = Field("sft", description=f"the method these settings are for (set from it) {OURS}")
    max_length: int = Field(2048, ge=1, description=f"prompt + solution tokens kept (longer ones are cut) {OURS}")
    recipe: Literal["copsd", "opsd"] = Field(
        "copsd",
        description="copsd: training prompt -> solution, loss on the solution only; opsd: the OPSD repository's "
        f"recipe (problem + instruction as the user turn, no thinking prefix, loss on every token) {OURS}",
    )
    student_thinking: StudentThinking = True


TrainSettings = CopsdSettings | GrpoSettings | SftSettings
TRAIN_CLASSES: dict[str, type[TrainCommon]] = {"copsd": CopsdSettings, "grpo": GrpoSettings, "sft": SftSettings}


class JobConfig(_Strict):
    """The fully resolved configuration of one job."""

    method: Literal["base", "copsd", "grpo", "sft"] = Field(
        ..., description=f"base (the untrained model) | copsd | grpo | sft {PAPER}"
    )
    model: str = Field(..., min_length=1, description=f"Hub id, local directory, or builtin:<name> {OURS}")
    language: str = Field(..., description=f"target language: a registry code (swa) or an alias of one (sw) {OURS}")
    seed: int = Field(
        0, description=f"seed of everything random: LoRA init, data order, rollouts, evaluation samples {OURS}"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description=f"model dtype; auto = bfloat16 on a GPU that supports it, else float32 {OURS}"
    )
    eval: EvalConfig = Field(EvalConfig(), description=f"how the model (or each checkpoint) is evaluated {OURS}")
    train: TrainSettings | None = Field(
        None, discriminator="method", description=f"training settings of a trained method; null for base {OURS}"
    )

    @field_validator("language")
    @classmethod
    def _canonical_language(cls, v: str) -> str:
        try:
            return canonical_code(v)
        except Exception as exc:  # CopsdError -> pydantic error with the same message
            raise ValueError(str(exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _train_block_for_method(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        method = data.get("method")
        train = data.get("train")
        if method == "base":
            data["train"] = None  # the untrained model has no training block
        elif method in TRAIN_CLASSES:
            train = dict(train or {}) if not isinstance(train, BaseModel) else train.model_dump()
            train["method"] = method
            data["train"] = train
        return data

    @model_validator(mode="after")
    def _language_in_benchmark(self) -> JobConfig:
        check_language(self.eval.benchmark, self.language, self.eval.split)
        if self.train is not None:
            t = self.train
            bad = [
                c for c in self.eval.checkpoints if c < 0 or c > t.max_steps or (c % t.save_steps and c != t.max_steps)
            ]
            if bad:
                raise ValueError(
                    f"eval.checkpoints {bad} are not saved steps: use 0, multiples of train.save_steps "
                    f"({t.save_steps}) up to train.max_steps ({t.max_steps}), or max_steps itself"
                )
        return self

    # ---- identity -------------------------------------------------------------------------
    def canonical(self) -> dict:
        """The hashed view: everything that can change the numbers, nothing that cannot."""
        d = self.model_dump(mode="json")
        for section, key in UNHASHED_PATHS:
            if isinstance(d.get(section), dict):
                d[section].pop(key, None)
        if self.method == "base":
            d["eval"].pop("checkpoints", None)
        if not d["eval"].get("budgets"):  # absent = the ids of specs written before budgets existed
            d["eval"].pop("budgets", None)
        else:
            d["eval"]["budgets"] = sorted(set(d["eval"]["budgets"]))
        d["prompts"] = get_language(self.language).fingerprint  # the strings in use (COPSD_LANGUAGES)
        return d

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def job_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()[:12]

    @property
    def label(self) -> str:
        return f"{self.method}/{short_model_name(self.model)}/{self.language}/seed{self.seed}"

    def eval_steps(self) -> list[int]:
        """Checkpoint steps to evaluate: step 0 for the base model, the spec's list otherwise."""
        if self.method == "base":
            return [0]
        if self.eval.checkpoints:
            return sorted(set(self.eval.checkpoints))
        return [self.train.max_steps] if self.train else [0]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, text: str) -> JobConfig:
        return cls.model_validate(load_yaml(text, "job config"))


def short_model_name(model: str) -> str:
    """`Qwen/Qwen3-1.7B` -> `Qwen3-1.7B`; `/path/to/dir/` -> `dir`; `builtin:tiny-qwen3` -> `tiny-qwen3`."""
    m = model.rstrip("/")
    if m.startswith("builtin:"):
        return m.split(":", 1)[1]
    return m.rsplit("/", 1)[-1]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value}; used for MLflow params and spec overrides."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
