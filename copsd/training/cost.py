"""GPU time of one job, estimated from its settings and recorded throughput (no weights loaded):
`copsd sweep plan SPEC --estimate` prints tokens and GPU-hours per job and in total.

Beside `memory.py` for the same reason (the runner and the CLI both import it). The measured
numbers it works from are data (`resources/throughput.yaml`, each traced to docs/benchmarks.md).

A job's time is the sum of three parts (model loading, grading and checkpoint writes are left out):
  rollouts    COPSD and GRPO: every sampling call decodes its rows together until the longest
              ends: one call per step with the fast engine (train.rollout_batch auto/step: 32 rows
              at the paper's settings), else one per micro-batch (COPSD 4 rows, GRPO 8)
  loss        completion tokens of every step x the recorded cost of a step per completion token
              (its prompts and COPSD's teacher forward are inside that time)
  evaluation  every checkpoint: problems x samples sequences through eval.batch_size slots, either
              continuous (slots refilled as sequences stop: steps = tokens / slots) or static
              (each wave of `batch_size` waits for its longest sequence: today's engine before
              issue 15, and `hf`)

Lengths are not in the settings, so they are assumed: a sequence's length is lognormal with median
LENGTH_MEDIAN x its budget and log-sd LENGTH_SIGMA, cut at the budget (the defaults: median 400
of 1,024, ~15% truncated; what `copsd speed workload` decodes). The mean and the expected longest
of n such draws are computed exactly (numerical integration of the distribution), so the estimate
is the same on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import yaml

from copsd.config import CopsdSettings, GrpoSettings, JobConfig, SftSettings
from copsd.models.shapes import short_name

LENGTH_MEDIAN = 400 / 1024  # median length as a share of the budget
LENGTH_SIGMA = 0.9
N_PROBLEMS = 250  # AfriMGSM's test split per language


@lru_cache(maxsize=1)
def throughput() -> dict:
    return yaml.safe_load(resources.files("copsd").joinpath("resources/throughput.yaml").read_text())


def gpus() -> list[str]:
    return sorted(throughput())


def shape_key(model: str) -> str | None:
    """'Qwen/Qwen3-1.7B' -> 'qwen3-1.7b' (copsd.models.shapes.short_name) when recorded, else None."""
    key = short_name(model)
    return key if key in next(iter(throughput().values()))["decode_scale"] else None


def _cdf(x: float, budget: int) -> float:
    """P(length <= x) for the assumed length distribution (lognormal cut at the budget)."""
    if x >= budget:
        return 1.0
    if x <= 0:
        return 0.0
    z = (math.log(x) - math.log(LENGTH_MEDIAN * budget)) / LENGTH_SIGMA
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@lru_cache(maxsize=256)
def expected_max(budget: int, n: int) -> float:
    """E[the longest of n sequences] = integral over [0, budget] of 1 - F(x)^n (n = 1: the mean)."""
    points = 2048
    dx = budget / points
    return sum(1 - _cdf((i + 0.5) * dx, budget) ** n for i in range(points)) * dx


def mean_length(budget: int) -> float:
    return expected_max(budget, 1)


def sorts(s) -> bool:
    """Whether sampling with these settings sorts the whole vocabulary (sampling.sample_next: top-p
    without a top-k; not greedy, not unrestricted)."""
    return s.temperature > 0 and s.top_k <= 0 and s.top_p < 1.0


def decode_ms(gpu: str, shape: str, batch: int, no_top_k: bool = False) -> float:
    """ms per decode step at `batch` rows: log-linear between recorded batches, flat outside."""
    t = throughput()[gpu]
    (ref,) = t["decode_ms"].values()
    pts = sorted((int(b), float(ms)) for b, ms in ref.items())
    lb = math.log(batch)
    if batch <= pts[0][0]:
        ms = pts[0][1]
    elif batch >= pts[-1][0]:
        ms = pts[-1][1] * batch / pts[-1][0]  # beyond the largest measured batch: linear in rows
    else:
        for (b0, m0), (b1, m1) in zip(pts, pts[1:]):
            if b0 <= batch <= b1:
                w = (lb - math.log(b0)) / (math.log(b1) - math.log(b0))
                ms = m0 + w * (m1 - m0)
                break
    ms *= float(t["decode_scale"][shape])
    return ms + (t["full_sort_ms_per_row"] * batch if no_top_k else 0.0)


@dataclass
class Cost:
    gpu: str
    tokens: dict[str, float] = field(default_factory=dict)  # generated tokens per part
    hours: dict[str, float] = field(default_factory=dict)  # GPU-hours per part (continuous evaluation)
    # the same job on the engine before continuous batching: static evaluation waves, rollouts
    # sampled per micro-batch
    before: dict[str, float] = field(default_factory=dict)

    @property
    def total_hours(self) -> float:
        return sum(self.hours.values())

    @property
    def static_total_hours(self) -> float:
        return sum({**self.hours, **self.before}.values())

    def as_dict(self) -> dict:
        return {
            "gpu": self.gpu,
            "tokens_m": {k: round(v / 1e6, 3) for k, v in self.tokens.items()},
            "gpu_hours": {k: round(v, 3) for k, v in self.hours.items()},
            "total_gpu_hours": round(self.total_hours, 3),
            "total_gpu_hours_before_continuous_batching": round(self.static_total_hours, 3),
        }


def estimate_cost(job: JobConfig, gpu: str = "h100", n_problems: int = N_PROBLEMS) -> Cost | None:
    """GPU time of `job` on one `gpu`; None when no throughput is recorded for its model."""
    shape = shape_key(job.model)
    if shape is None or gpu not in throughput():
        return None
    rec = throughput()[gpu]
    c = Cost(gpu)
    t = job.train
    if isinstance(t, (CopsdSettings, GrpoSettings)):
        budget = t.max_completion_length
        seqs = t.batch_size  # GRPO: completions per step; COPSD: one rollout per prompt
        if isinstance(t, GrpoSettings):  # whole groups per micro-batch
            micro_rows = max(1, t.micro_batch_size // t.num_generations) * t.num_generations
        else:
            micro_rows = min(t.micro_batch_size, t.batch_size)

        def rollout_hours(rows: int) -> float:
            calls = t.max_steps * math.ceil(seqs / rows)
            return calls * expected_max(budget, rows) * decode_ms(gpu, shape, rows, sorts(t)) / 3.6e6

        # the whole step in one call: `step`, or `auto` with the fast engine (what a GPU runs)
        by_step = t.rollout_batch == "step" or (t.rollout_batch == "auto" and t.rollout_engine != "hf")
        c.tokens["rollouts"] = t.max_steps * seqs * mean_length(budget)
        c.hours["rollouts"] = rollout_hours(seqs if by_step else micro_rows)
        c.before["rollouts"] = rollout_hours(micro_rows)
        loss_tokens = t.max_steps * seqs * mean_length(budget)  # the rate is per completion token, prompts included
    elif isinstance(t, SftSettings):
        loss_tokens = t.max_steps * t.batch_size * t.max_length * 0.5  # an assumed half-full sequence
    else:
        loss_tokens = 0.0
    if loss_tokens:
        per_token = float(rec["loss_ms_per_token"][shape]) * float(rec["loss_scale"][job.method])
        c.hours["loss"] = loss_tokens * per_token / 3.6e6
    e = job.eval
    d = e.decoding
    budget, slots = d.max_new_tokens, e.batch_size
    seqs = n_problems * d.n_samples
    checkpoints = len(job.eval_steps())
    ms = decode_ms(gpu, shape, min(slots, seqs), sorts(d))
    c.tokens["evaluation"] = checkpoints * seqs * mean_length(budget)
    c.hours["evaluation"] = checkpoints * math.ceil(seqs * mean_length(budget) / min(slots, seqs)) * ms / 3.6e6
    waves = math.ceil(seqs / slots)
    c.before["evaluation"] = checkpoints * waves * expected_max(budget, min(slots, seqs)) * ms / 3.6e6
    return c
