"""Peak memory of one job, estimated from its settings and the model's shape alone (no weights are
loaded): `copsd sweep plan --estimate` prints it per job, and `run_job` refuses a job that cannot
fit its device before loading any weights (`preflight`).

Here, next to the trainers it models, so that both the runner (`copsd.run`) and the CLI can import
it (`copsd.speed` sits beside `copsd.run` in scripts/import_graph.py's layers, so it cannot).

A job goes through up to four phases; the estimate of each is a sum of named parts (bytes), and
the job's peak is the largest phase:

  rollout          weights + LoRA state + the rollout KV cache + one layer's prefill + sampling
  teacher forward  COPSD: the no-grad teacher forward over teacher prompt + rollout (one layer at a time)
  loss step        weights + LoRA state (param, grad, AdamW m and v) + the activations autograd keeps
                   for one forward (every layer's, or with gradient checkpointing each layer's input
                   plus one layer recomputed in backward) + the chunk of vocabulary-sized logits
  evaluation       weights + adapters + the evaluation KV cache (eval.batch_size rows x (prompt +
                   max_new_tokens)) + one layer's prefill + sampling

What is counted, per token of a forward (H hidden, inter the MLP width, q = heads x head_dim, kv =
kv_heads x head_dim, r the LoRA rank; `a` bytes per activation, 4 for the fp32 adapters) is what
autograd saves in a Qwen3/Llama decoder layer with frozen base weights and PEFT LoRA on every
projection (`layer_saved_bytes`); frozen projections save nothing (their weight gradient is not
needed). Prompt lengths are not in the settings: they are assumed (PROMPT_TOKENS,
TEACHER_PROMPT_TOKENS, as docs/benchmarks.md measures), and every rollout is assumed to run to its
budget (the worst case, and what a real model's GRPO rollouts do). On a CPU everything is fp32
(as `resolve_dtype` runs it) and the process's Python runtime is counted; on a GPU the estimate is
of allocated tensors (`torch.cuda.max_memory_allocated`), compared with the free memory.
Calibration against measured peaks (-3% to +4% on the H100 rows with checkpointing, 5-15% high on
CPU without it) and against steps counted on fake tensors at Qwen3 1.7B-8B (3-18% high):
docs/benchmarks.md, "Memory estimate vs measured" and "Traced".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from copsd.config import GrpoSettings, JobConfig, SftSettings
from copsd.errors import CopsdError
from copsd.models.shapes import ModelShape, model_shape, shape_from_config
from copsd.rollout.fast import layout
from copsd.training.host_memory import host_memory
from copsd.training.host_memory import return_freed_memory as return_freed_memory  # the runner imports it here

GiB = 2**30

# ---- assumptions (what the settings do not say) --------------------------------------------
# student / evaluation prompt (an AfriMGSM problem in the chat template) and COPSD's teacher prompt
# (+ the English problem and reference solution): the lengths docs/benchmarks.md measures with, not
# checked per language (a script the tokenizer splits finely, e.g. Ge'ez or Vai, runs longer)
PROMPT_TOKENS = 256
TEACHER_PROMPT_TOKENS = 768
LORA_BYTES = 4  # PEFT keeps adapters in fp32 over a bf16/fp16 model (autocast_adapter_dtype)
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, fp32 like the adapters
# vocabulary-sized fp32 buffers alive per loss position: COPSD's student and teacher logits, their
# log-softmaxes, probabilities and the divergence (6: fitted to chunk 256 vs 1024 on the H100,
# 6.55 vs 9.16 GiB); a log-prob (GRPO, SFT): logits, log-softmax and its gradient (3)
LOSS_BUFFERS = {"copsd": 6, "grpo": 3, "sft": 3}
SAMPLING_BUFFERS = 4  # fp32 [rows, vocab] while sampling a token: logits, probabilities, sort, noise
RUNTIME = "runtime (python, torch)"
# RSS of a process with torch, transformers, peft and copsd imported: 0.41 GiB measured (torch 2.13 CPU)
CPU_RUNTIME = int(0.4 * GiB)


# ---- per-token costs ----------------------------------------------------------------------------
def layer_saved_bytes(s: ModelShape, a: int, r: int) -> int:
    """Bytes autograd keeps per token for one decoder layer's backward (frozen base, LoRA r on the
    seven projections). `a`: bytes per activation; adapters are LORA_BYTES."""
    H, inter, q = s.hidden, s.intermediate, s.q
    cast = a != LORA_BYTES  # PEFT casts each adapter's input to fp32: one copy per adapter

    def lora_inputs(width: int, readers: int) -> int:  # what lora_A keeps of the input it reads
        return LORA_BYTES * width * (readers if cast else 1)

    norms = 2 * 4 * H  # input and post-attention RMSNorm keep their input in fp32
    adapters = lora_inputs(H, 3) + lora_inputs(q, 1) + lora_inputs(H, 2) + lora_inputs(inter, 1)
    adapters += 7 * LORA_BYTES * r  # lora_B keeps lora_A's output
    qk_norms = 4 * (q + s.kv)  # q_norm and k_norm keep fp32 inputs
    # SDPA keeps q, k, v (k and v repeated to every query head: a padding mask rules out native
    # GQA), its output, and a fp32 log-sum-exp per head
    attention = a * 4 * q + 4 * s.heads
    mlp = 3 * a * inter  # SiLU keeps gate; gate*up keeps SiLU(gate) and up
    return norms + adapters + qk_norms + attention + mlp


def layer_transient_bytes(s: ModelShape, a: int) -> int:
    """Bytes per token alive inside one layer of a no-grad forward (prefill, teacher): the
    residual, normed input, q/k/v, attention output, gate, up and their product."""
    return a * (3 * s.hidden + 2 * s.q + 2 * s.kv + 3 * s.intermediate)


def kv_bytes_per_token(s: ModelShape, a: int) -> int:
    return 2 * s.layers * s.kv * a  # K and V in every layer


# ---- the estimate -------------------------------------------------------------------------------
@dataclass
class Estimate:
    """Bytes per named part, per phase; `peak` is the largest phase's total."""

    job_id: str
    device: str
    dtype: str
    phases: dict[str, dict[str, int]] = field(default_factory=dict)

    def total(self, phase: str) -> int:
        return sum(self.phases[phase].values())

    @property
    def phase(self) -> str:
        """The phase with the largest total (the one that sets the peak)."""
        return max(self.phases, key=self.total)

    @property
    def peak(self) -> int:
        return self.total(self.phase)

    @property
    def peak_gib(self) -> float:
        return self.peak / GiB

    def breakdown(self) -> dict[str, float]:
        """The peak phase's parts in GiB, largest first."""
        parts = self.phases[self.phase]
        return {k: v / GiB for k, v in sorted(parts.items(), key=lambda kv: -kv[1])}

    def summary(self) -> str:
        """`23.4 GiB (evaluation: kv cache 14.1, weights 7.5, ...)`."""
        top = ", ".join(f"{k} {v:.1f}" for k, v in list(self.breakdown().items())[:3])
        return f"{self.peak_gib:.1f} GiB ({self.phase}: {top})"


def activation_dtype(job: JobConfig, device: str) -> tuple[str, int]:
    """(dtype, bytes) a job computes in on `device`, as copsd.models.load.resolve_dtype picks it:
    `auto` is bf16 on a GPU, and a CPU computes in fp32 whatever the spec says."""
    if device != "cuda" or job.dtype == "float32":
        return "float32", 4
    return ("float16" if job.dtype == "float16" else "bfloat16"), 2


def _rollout_engine(engine: str, device: str) -> str:
    return engine if engine != "auto" else ("fast" if device == "cuda" else "hf")


def _kv_positions(engine: str, prompt: int, new: int) -> int:
    """Cache positions per row: the fast engine preallocates an aligned, bucketed cache (its own
    arithmetic, which loads no torch)."""
    if engine == "fast":
        return layout.capacity(prompt, new)
    return prompt + new


def estimate(
    job: JobConfig,
    shape: ModelShape,
    device: str = "cuda",
    n_problems: int | None = None,
    *,
    prompt_tokens: int = PROMPT_TOKENS,
    teacher_prompt_tokens: int = TEACHER_PROMPT_TOKENS,
) -> Estimate:
    """The estimate of `job` on a `device` of type "cuda" or "cpu". `n_problems`: the evaluation
    set's size when known (a smaller set decodes fewer rows than eval.batch_size); the prompt
    lengths are the assumptions above unless given (a measurement's synthetic prompts)."""
    dtype, a = activation_dtype(job, device)
    est = Estimate(job.job_id, device, dtype)
    s, V = shape, shape.vocab
    weights = s.params() * a
    runtime = CPU_RUNTIME if device == "cpu" else 0
    base = {"weights": weights, **({RUNTIME: runtime} if runtime else {})}

    def decode_parts(rows: int, new: int, engine: str) -> dict[str, int]:
        """A rollout batch: the KV cache, one layer of the prefill, the sampling buffers."""
        positions = _kv_positions(engine, prompt_tokens, new)
        return {
            "kv cache": rows * positions * kv_bytes_per_token(s, a),
            "prefill (one layer)": rows * prompt_tokens * layer_transient_bytes(s, a),
            "sampling": rows * V * 4 * SAMPLING_BUFFERS,
        }

    # ---- evaluation (every job) ----
    e = job.eval
    rows = e.batch_size if n_problems is None else max(1, min(e.batch_size, n_problems * e.decoding.n_samples))
    eval_engine = _rollout_engine(e.rollout_engine, device)
    t = job.train
    lora_state: dict[str, int] = {}
    lora_copies = 0  # the fast engine's shadow copies of the adapters, in the model dtype
    if t is not None:
        n_lora = s.lora_params(t.lora.r, tuple(t.lora.target_modules))
        # AdamW's states and the last step's gradients stay allocated after training (the trainer
        # is alive until the job ends), so the adapters cost the same in every phase
        lora_state = {
            "lora params": n_lora * LORA_BYTES,
            "lora grads": n_lora * LORA_BYTES,
            "adamw states": n_lora * LORA_BYTES * ADAMW_STATES,
        }
        lora_copies = n_lora * a

    def fast_copies(engine: str) -> dict[str, int]:
        return {"lora copies (fast engine)": lora_copies} if engine == "fast" and lora_copies else {}

    est.phases["evaluation"] = {
        **base,
        **lora_state,
        **fast_copies(eval_engine),
        **decode_parts(rows, e.decoding.max_new_tokens, eval_engine),
    }
    if t is None:
        return est

    # ---- training: sequences per forward ----
    method = job.method
    if isinstance(t, SftSettings):
        seq, completion = t.max_length, max(1, t.max_length - prompt_tokens)  # prompt + target <= max_length
        in_micro = t.micro_batch_size
    else:
        completion = t.max_completion_length
        seq = prompt_tokens + completion
        # GRPO: micro_batch_size counts completions, and a micro-batch holds whole groups
        g = t.num_generations if isinstance(t, GrpoSettings) else 1
        in_micro = max(1, t.micro_batch_size // g) * g
    per_forward = min(t.micro_batch_size, in_micro)
    if t.max_tokens_per_forward:  # forward_batches: count x longest <= the cap; a longer one goes alone
        longest = max(seq, teacher_prompt_tokens + completion) if method == "copsd" else seq
        per_forward = max(1, min(per_forward, t.max_tokens_per_forward // longest))
    tokens, targets = per_forward * seq, per_forward * completion

    # ---- rollout (COPSD, GRPO) ----
    rollout_engine = _rollout_engine(t.rollout_engine, device)
    kept_cache: dict[str, int] = {}
    if method in ("copsd", "grpo"):
        # train.rollout_batch: the whole step in one call (auto: with the fast engine) or per micro-batch
        by_step = t.rollout_batch == "step" or (t.rollout_batch == "auto" and rollout_engine == "fast")
        decode = decode_parts(t.batch_size if by_step else in_micro, completion, rollout_engine)
        if rollout_engine == "fast":  # it keeps its cache for the next batch of the same shape: through the loss too
            kept_cache = {**fast_copies("fast"), "rollout kv cache (kept)": decode["kv cache"]}
        # GRPO samples the whole step before any backward: no gradients exist yet (zeroed to None)
        state = {k: v for k, v in lora_state.items() if not (method == "grpo" and k == "lora grads")}
        est.phases["rollout"] = {**base, **state, **fast_copies(rollout_engine), **decode}

    # ---- loss step ----
    layer = layer_saved_bytes(s, a, t.lora.r)
    if t.gradient_checkpointing:  # each layer's input, and one layer's activations during its backward
        activations = tokens * (s.layers * a * s.hidden + layer)
    else:
        activations = tokens * s.layers * layer
    chunk = min(t.loss_chunk_size, targets) if t.loss_chunk_size > 0 else targets  # 0: every position at once
    loss = {
        "activations": activations,
        # the decoder's output (a), the final norm's fp32 input, and the output's gradient (a)
        "hidden states": tokens * s.hidden * (2 * a + 4),
        "logits chunk": chunk * V * 4 * LOSS_BUFFERS[method],
        # inside a layer's backward: fp32 gradients that PEFT's fp32 adapter inputs bring with them,
        # one at the MLP's inner width and two at the hidden width (counted on fake tensors,
        # docs/benchmarks.md "Traced"; without this term long GRPO steps at 8B were 1.8% under)
        "layer backward (fp32)": tokens * 4 * (s.intermediate + 2 * s.hidden),
    }
    if method == "copsd":  # the teacher's hidden states of the rollout tokens, kept for the loss
        loss["teacher hidden states"] = targets * s.hidden * a
        teacher_tokens = per_forward * (teacher_prompt_tokens + completion)
        est.phases["teacher forward"] = {
            **base,
            **lora_state,
            **kept_cache,
            "teacher forward (one layer, no grad)": teacher_tokens * layer_transient_bytes(s, a),
            "teacher hidden states": targets * s.hidden * a,
        }
    if isinstance(t, GrpoSettings) and t.kl_coef > 0:
        loss["reference forward (one layer, no grad)"] = tokens * layer_transient_bytes(s, a)
    est.phases["loss step"] = {**base, **lora_state, **kept_cache, **loss}
    return est


def estimate_job(job: JobConfig, device: str = "cuda", n_problems: int | None = None) -> Estimate | None:
    """`estimate` with the model's shape looked up (None when the shape is unknown without loading)."""
    shape = model_shape(job.model)
    return estimate(job, shape, device, n_problems) if shape is not None else None


# ---- preflight ----------------------------------------------------------------------------------
PHASE_SETTINGS = {
    "evaluation": "eval.batch_size or eval.decoding.max_new_tokens",
    "rollout": "train.max_completion_length or train.micro_batch_size (with train.rollout_batch: micro; "
    "`step` samples the whole train.batch_size at once)",
    "teacher forward": "train.micro_batch_size, train.max_tokens_per_forward or train.max_completion_length",
    "loss step": "train.micro_batch_size, train.max_tokens_per_forward or train.max_completion_length "
    "(SFT: train.max_length), set train.rollout_batch: micro (the step's rollout cache is kept), "
    "or turn train.gradient_checkpointing on",
}


def preflight(job: JobConfig, device, *, n_problems: int | None = None, config: Any = None) -> bool:
    """Fail fast (one-line CopsdError) when the job's estimated peak cannot fit `device` (a
    torch.device): on CUDA above the free memory, on CPU above the total RAM; on CPU above the
    available RAM it only warns. `config`: the config of the model already loaded, when its shape
    was not known beforehand (its weights then count as taken, not as needed). Returns False when
    the shape is unknown (nothing was checked)."""
    shape = shape_from_config(config) if config is not None else model_shape(job.model)
    if shape is None:
        return False
    kind = "cuda" if device.type == "cuda" else "cpu"
    est = estimate(job, shape, kind, n_problems)
    # what this process already holds: the Python runtime (CPU), and the weights once loaded
    peak_parts = est.phases[est.phase]
    loaded = peak_parts.get(RUNTIME, 0) + (peak_parts["weights"] if config is not None else 0)
    what = f"{job.label}: estimated peak memory {est.summary()}"
    fix = f"lower {PHASE_SETTINGS[est.phase]}, or run with --no-preflight to try anyway"
    if kind == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info(device)
        if est.peak - loaded > free:
            raise CopsdError(
                f"{what} exceeds the free memory of {device} ({(free + loaded) / GiB:.1f} of {total / GiB:.1f} GiB); "
                f"{fix}"
            )
        return True
    available, total = host_memory()
    if est.peak > total:
        raise CopsdError(f"{what} exceeds this machine's RAM ({total / GiB:.1f} GiB); {fix}")
    if est.peak - loaded > available:
        import warnings

        warnings.warn(
            f"{what} is more than the RAM available now ({(available + loaded) / GiB:.1f} of "
            f"{total / GiB:.1f} GiB); it may swap or be killed: {fix}",
            stacklevel=1,
        )
    return True
