"""The fast engine's step-level levers (issue 15), named as benchmarks name them: `fast+fuse+flex`."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class EngineOptions:
    """Step-level levers of issue 15, off by default until a GPU run shows they pay (docs/benchmarks.md).
    Each one computes the same distribution: in fp32 the plain engine's greedy tokens exactly
    (tests/test_rollout_fast.py); in bf16 fused kernels round differently, as `fast` does against
    `hf`. A benchmark names them as `fast+fuse`, `fast+fuse+flex+search`, ..."""

    fuse: bool = False  # q/k/v and gate/up as one GEMM each (base weights re-homed into one buffer)
    compile: bool = False  # torch.compile the decode step (fused elementwise kernels) before graph capture
    search: bool = False  # top-p without top-k by an exact threshold search instead of a full-vocabulary sort
    flex: bool = False  # decode attention by FlexAttention (implies compile): each slot reads only its own blocks

    @classmethod
    def parse(cls, name: str) -> EngineOptions:
        """`fast[+fuse][+compile][+flex][+search]` -> options; ValueError on anything else."""
        head, *flags = name.split("+")
        known = {f.name for f in fields(cls)}
        if head != "fast" or any(f not in known for f in flags) or len(set(flags)) < len(flags):
            raise ValueError(f"{name!r}: expected fast with optional +{' +'.join(sorted(known))}")
        return cls(**{f: True for f in flags})

    @classmethod
    def is_name(cls, name: str) -> bool:
        """Whether `name` parses (fast, optionally with levers)."""
        try:
            cls.parse(name)
        except ValueError:
            return False
        return True

    def label(self) -> str:
        return "+".join(["fast"] + [f.name for f in fields(self) if getattr(self, f.name)])
