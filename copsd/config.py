"""Typed job configuration: one canonical, hashable config per job.

A job is (method, model, language, seed) plus its evaluation and training settings. Defaults
are PAPER.md's settings; a sweep spec overrides them. `JobConfig.job_id` is a short hash of the
canonical JSON of the resolved config, so it is stable across runs and machines and changes
exactly when a setting that can change the numbers changes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from copsd.data.benchmarks import all_splits, benchmarks, check_language
from copsd.data.languages import canonical_code, get_language
from copsd.yaml_input import load_yaml

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
ENGINE_HELP = "auto (fast on a GPU for Llama/Qwen models, else hf) | fast | hf; not hashed"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Decoding(_Strict):
    """Sampling settings for evaluation (PAPER.md: 12 samples, T=1.0, top_p 0.95, no top_k, 1024)."""

    n_samples: int = Field(12, ge=1, description="samples per problem (k of Pass@k, Maj@k)")
    temperature: float = Field(1.0, ge=0.0, description="0 = greedy")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 = off")
    max_new_tokens: int = Field(1024, ge=1, description="decoding budget per sample")


class EvalConfig(_Strict):
    benchmark: str = Field("afrimgsm", description="a benchmark of copsd/resources/benchmarks.yaml or a plugin's")
    split: str = Field("test", description="afrimgsm: test|dev; polymath: low|medium|high|top; others: test")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N problems")
    thinking: bool = Field(True, description="open the assistant turn with <think> + the language's sentence")
    decoding: Decoding = Decoding()
    grader: Literal["paper", "lenient"] = Field(
        "paper",
        description="paper: the released evaluation's extraction and check; lenient: copsd's (both are stored)",
    )
    batch_size: int = Field(64, ge=1, description="sequences per generate call (changes the RNG stream)")
    checkpoints: list[int] = Field(
        default_factory=list, description="training steps whose adapters are evaluated (trained methods)"
    )
    # Test-time scaling without decoding twice: a sample of budget b is the first b tokens of the
    # same sample at the full budget (same seed, same batch), so each budget is graded by cutting.
    budgets: list[int] = Field(
        default_factory=list,
        description="smaller decoding budgets also graded (test-time scaling), each < decoding.max_new_tokens",
    )
    data_dir: str | None = Field(None, description="local AfriMGSM copy (<lang>/test.tsv); not hashed")
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
        known = benchmarks()
        if v not in known:
            raise ValueError(f"unknown benchmark '{v}'; allowed: {', '.join(known)}")
        return v

    @field_validator("split")
    @classmethod
    def _split_known(cls, v: str) -> str:
        allowed = all_splits()
        if v not in allowed:
            raise ValueError(f"unknown split '{v}'; allowed: {', '.join(sorted(allowed))}")
        return v


class LoraSettings(_Strict):
    """LoRA on all projections, r=64, alpha=128 (PAPER.md)."""

    r: int = Field(64, ge=1)
    alpha: int = Field(128, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TrainCommon(_Strict):
    """Optimiser and checkpointing shared by every trained method (PAPER.md defaults)."""

    lr: float = Field(5e-6, gt=0.0, description="peak learning rate")
    # The released runs set no scheduler, so transformers' default applies: linear decay from the
    # peak to 0 over max_steps, no warmup.
    lr_scheduler: Literal["linear", "constant", "cosine"] = Field(
        "linear", description="linear (released default: peak -> 0 over max_steps) | constant | cosine"
    )
    warmup_steps: int = Field(0, ge=0, description="steps of linear warmup from 0 to the peak")
    max_grad_norm: float = Field(0.1, gt=0.0)
    batch_size: int = Field(32, ge=1, description="prompts per optimizer step (effective batch)")
    micro_batch_size: int = Field(4, ge=1, description="prompts per forward/backward; accumulation fills the rest")
    max_steps: int = Field(100, ge=1)
    save_steps: int = Field(5, ge=1)
    weight_decay: float = Field(0.0, ge=0.0)
    lora: LoraSettings = LoraSettings()
    data_path: str | None = Field(None, description="training JSON (local path or Hub id); not hashed")
    val_size: int = Field(32, ge=0, description="training records held out (never trained on) for validation")
    max_examples: int | None = Field(
        None, ge=1, description="use only the first N usable records of the data (e.g. the released 500 / 3000)"
    )
    loss_chunk_size: int = Field(
        256, ge=0, description="positions per LM-head chunk in the loss (0 = direct full-logits path); not hashed"
    )
    gradient_checkpointing: bool = Field(
        True,
        description="recompute each decoder layer in backward instead of keeping its activations (as the "
        "released runs); memory only, not hashed",
    )
    max_tokens_per_forward: int = Field(
        0,
        ge=0,
        description="cap on padded tokens (sequences x longest) per forward: a micro-batch's sequences are split "
        "into sub-batches under it, gradients weighted so the step is unchanged (0 = no cap; a longer "
        "sequence goes alone); memory only, not hashed",
    )
    rollout_engine: Literal["auto", "fast", "hf"] = Field("auto", description=ENGINE_HELP)
    rollout_batch: Literal["auto", "step", "micro"] = Field(
        "auto",
        description="sample all of a step's rollouts in one call (step: one wide decode instead of one per "
        "micro-batch; its KV cache is kept through the loss step) or one call per micro-batch (micro); auto = "
        "step with the fast engine, micro with hf. The weights do not change within a step, so both sample "
        "the same distribution; not hashed",
    )


class CopsdSettings(TrainCommon):
    method: Literal["copsd"] = "copsd"
    temperature: float = Field(1.1, gt=0.0, description="rollout temperature; logits are divided by it in the loss")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(20, ge=0)
    max_completion_length: int = Field(2048, ge=1)
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="teacher weight of the generalized JSD (divergence=jsd); as released, 0 = forward_kl, 1 = reverse_kl",
    )
    clip: float | None = Field(0.05, description="divergence cap; null = off")
    clip_mode: Literal["entry", "token_rescale"] = Field(
        "entry", description="entry: clamp each vocabulary entry (paper); token_rescale: scale a token's sum down"
    )
    teacher: Literal["fixed", "live", "ema"] = "fixed"
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0, description="teacher: ema (released default 0.999)")
    include_problem_en: bool = True
    include_reference_solution_en: bool = True
    student_thinking: bool = True


class GrpoSettings(TrainCommon):
    method: Literal["grpo"] = "grpo"
    num_generations: int = Field(8, ge=2)
    temperature: float = Field(1.2, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    max_completion_length: int = Field(2048, ge=1)
    epsilon: float = Field(0.2, gt=0.0)
    loss_type: Literal["dapo", "grpo", "bnpo"] = Field(
        "dapo",
        description="dapo: step token mean (TRL 0.26 default, what the released script gets); "
        "grpo: per-completion mean (OPSD's launch script); bnpo: per-micro-batch token mean",
    )
    kl_coef: float = Field(0.0, ge=0.0)
    format_reward: float = Field(0.0, ge=0.0)
    student_thinking: bool = True


class SftSettings(TrainCommon):
    method: Literal["sft"] = "sft"
    max_length: int = Field(2048, ge=1)
    recipe: Literal["copsd", "opsd"] = Field(
        "copsd",
        description="copsd: training prompt -> solution, loss on the solution only; opsd: the OPSD repository's "
        "recipe (problem + instruction as the user turn, no thinking prefix, loss on every token)",
    )
    student_thinking: bool = True


TrainSettings = CopsdSettings | GrpoSettings | SftSettings
TRAIN_CLASSES: dict[str, type[TrainCommon]] = {"copsd": CopsdSettings, "grpo": GrpoSettings, "sft": SftSettings}


class JobConfig(_Strict):
    """The fully resolved configuration of one job."""

    method: Literal["base", "copsd", "grpo", "sft"]
    model: str = Field(..., min_length=1, description="Hub id, local directory, or builtin:<name>")
    language: str
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    eval: EvalConfig = EvalConfig()
    train: TrainSettings | None = Field(None, discriminator="method")

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
