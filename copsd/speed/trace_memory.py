"""`copsd speed step --method M --trace`: the peak memory of one optimizer step at any model shape,
without that model's memory or compute.

The step runs exactly as `copsd.speed.step_memory.measure` runs it (the method's own trainer, the
same synthetic sequences), but every parameter, buffer and activation is a fake tensor (torch's
FakeTensorMode: shape, dtype and device, no data), so an 8B GRPO step of 8 x 2,048 tokens traces in
about half a minute in under 1 GiB of host memory. `LiveBytes` counts the bytes of every storage
from the op that creates it until it is freed, which is the tensor-level figure
`torch.cuda.max_memory_allocated` reports, less the caching allocator's rounding to 512 bytes and
what kernels allocate privately (cuBLAS workspaces, flash-attention scratch). The fake tensors live
on the CPU: on a CPU-only torch they cannot be CUDA tensors, so the CPU kernels' output shapes are
what is counted (CPU and CUDA flash attention both keep the output and a log-sum-exp per head).
tests/test_trace_memory.py checks the count against the CPU allocator's own on a real step.

A fake tensor has no values, so reading one on the host (`.item()`, `float(t)`, `bool(t.all())`)
is answered with 1 (True). On these synthetic inputs that is the real answer where it matters for
memory: no sequence is padded, so "is the attention mask all ones" is true; the other reads are
AdamW's step count and logged losses. The count of such reads is reported. transformers, seeing
fake tensors, would take the run for a graph trace and keep a causal mask that the eager run drops
(and with it a different attention path); `_as_eager` has it decide as the eager run does.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_iter

CATEGORIES = ("weights", "adapters", "gradients", "optimizer state", "activations and temporaries")


class LiveBytes(TorchDispatchMode):
    """Bytes of every live tensor storage, by category, and the peak with its breakdown.

    A storage is counted once, however many views share it, from the first op that returns it (or
    `add`) until Python frees its storage object (a weakref callback)."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, list] = {}  # id(storage) -> [weakref, bytes, category]
        self.now: dict[str, int] = defaultdict(int)
        self.peak = 0
        self.at_peak: dict[str, int] = {}
        self.host_reads = 0

    @property
    def total(self) -> int:
        return sum(self.now.values())

    def add(self, t: torch.Tensor, category: str = "activations and temporaries") -> None:
        """Count `t`'s storage (once), or move it to `category` if it is already counted."""
        st = t.untyped_storage()
        key = id(st)
        entry = self._live.get(key)
        if entry is not None:
            if entry[2] != category and category != "activations and temporaries":
                self.now[entry[2]] -= entry[1]
                self.now[category] += entry[1]
                entry[2] = category
            return
        n = st.nbytes()

        def freed(_ref, key=key) -> None:
            gone = self._live.pop(key, None)
            if gone is not None:
                self.now[gone[2]] -= gone[1]

        self._live[key] = [weakref.ref(st, freed), n, category]
        self.now[category] += n
        total = self.total
        if total > self.peak:
            self.peak = total
            self.at_peak = dict(self.now)

    def reset_peak(self) -> None:
        self.peak = self.total
        self.at_peak = dict(self.now)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:  # a host read of a fake value
            self.host_reads += 1
            x = args[0]
            return True if x.dtype == torch.bool else (1.0 if x.is_floating_point() else 1)
        out = func(*args, **(kwargs or {}))
        for t in tree_iter(out):
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out


@contextlib.contextmanager
def _as_eager() -> Iterator[None]:
    """transformers' mask builder treats a fake tensor as graph tracing (`is_tracing(mask)`) and
    then keeps the full mask; here it asks only whether torch itself is tracing, as in the eager run."""
    from transformers import masking_utils

    original = masking_utils.is_tracing
    masking_utils.is_tracing = lambda tensor=None: original(None)
    try:
        yield
    finally:
        masking_utils.is_tracing = original


def _meta_model(s) -> Any:
    """The setting's model with LoRA, on the meta device (no memory), as `step_memory._model` builds it."""
    from copsd.speed.shapes import random_model, with_lora

    if not s.model:
        return with_lora(random_model(s.shape, torch.device("meta"), getattr(torch, s.dtype)))
    from transformers import AutoConfig, AutoModelForCausalLM

    from copsd.config import LoraSettings
    from copsd.models.load import resolve_model_source
    from copsd.training.adapters import wrap_lora

    config = AutoConfig.from_pretrained(resolve_model_source(s.model), trust_remote_code=False)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, s.dtype))
    return wrap_lora(base, LoraSettings(), 0)


def _to_fake(model, mode) -> None:
    """Replace every parameter and buffer by a fake CPU tensor of the same shape and dtype, in
    place; a tensor shared by two modules (a tied LM head) stays shared."""
    device = torch.device("cpu")
    done: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor, param: bool) -> torch.Tensor:
        if id(t) not in done:
            f = mode.fake_tensor_converter.from_meta_and_device(mode, t.detach(), device)
            done[id(t)] = torch.nn.Parameter(f, requires_grad=t.requires_grad) if param else f
        return done[id(t)]

    for module in model.modules():  # assigned through the dicts: nn.Module.to would swap tensors
        for name, p in module._parameters.items():
            if p is not None:
                module._parameters[name] = fake(p, True)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = fake(b, False)


def trace(s) -> dict:
    """The peak bytes of one optimizer step of setting `s` (a `step_memory.StepSetting`), in the
    steady state: a first step creates AdamW's states, and the peak is that of the second."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from copsd.speed.step_memory import _trainer, estimate_gib, forwards_per_step

    t0 = time.perf_counter()
    model = _meta_model(s)
    mode = FakeTensorMode()
    _to_fake(model, mode)
    live = LiveBytes()
    for p in model.parameters():
        live.add(p, "adapters" if p.requires_grad else "weights")
    for b in model.buffers():
        live.add(b, "weights")
    weights = live.now["weights"]
    with mode, _as_eager():
        trainer = _trainer(s, model)
        for p in model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda q: live.add(q.grad, "gradients"))
        examples = list(range(s.prompts))
        with live:
            metrics: dict = {}
            start = 0
            for step in range(2):
                if step == 1:
                    live.reset_peak()
                    start = live.peak
                model.train()
                trainer.optimizer.zero_grad(set_to_none=True)
                metrics = trainer.compute_step(examples, 1)
                trainer.optimizer.step()
                for state in trainer.optimizer.state.values():
                    for v in state.values():
                        if isinstance(v, torch.Tensor):
                            live.add(v, "optimizer state")
    gib = 2**30
    return {
        "peak_gib": live.peak / gib,
        "base_gib": (weights + live.at_peak.get("adapters", 0)) / gib,
        "step_gib": (live.peak - weights - live.at_peak.get("adapters", 0)) / gib,
        "above_start_gib": (live.peak - start) / gib,  # above what the step starts with: last step's grads, AdamW
        "at_peak_gib": {c: live.at_peak.get(c, 0) / gib for c in CATEGORIES},
        "forwards_per_step": forwards_per_step(s, trainer),
        "estimate_gib": estimate_gib(s, model.get_base_model().config),
        "host_reads": live.host_reads,
        "trace_s": time.perf_counter() - t0,
        "loss": float(metrics.get("loss", float("nan"))),
    }
