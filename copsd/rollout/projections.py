"""The fast engine's linear layers: groups of projections that read the same input (q/k/v,
gate/up, o, down) over the model's own base weights, with LoRA from shadow copies in the model
dtype; with `fuse`, one GEMM per group (see `Projections`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Projections:
    """Linear layers that read the same input (q/k/v; gate/up; o; down). Base weights are read in
    place; an active LoRA runs from shadow copies in the model dtype (refreshed by `sync` before
    each batch) with the A matrices stacked, so a group costs one extra GEMM plus one fused
    add-GEMM per layer instead of peft's fp32 casts, GEMMs and adds.

    With `fuse` (EngineOptions) a group of several layers is one GEMM: their base weights are
    moved into one buffer (the modules keep their parameters, now views of it: no extra memory,
    and in-place changes such as peft's merge are seen) and their B matrices form one
    block-diagonal shadow, so the whole group is one base GEMM, one A GEMM and one add-GEMM."""

    def __init__(self, modules: list, dtype: torch.dtype, fuse: bool = False):
        self.base = [getattr(m, "base_layer", m) for m in modules]
        self.sizes = [m.weight.shape[0] for m in self.base]
        self.src = []  # (index, A, B, scale) of the modules that carry LoRA
        self.A: torch.Tensor | None = None
        self.B: list[torch.Tensor] = []
        for i, m in enumerate(modules):
            if hasattr(m, "lora_A") and m.active_adapters and m.active_adapters[0] in m.lora_A:
                name = m.active_adapters[0]
                self.src.append((i, m.lora_A[name].weight, m.lora_B[name].weight, float(m.scaling[name])))
        self.fused = fuse and len(self.base) > 1
        # a layer whose bias views the group's bias buffer (None: no bias in the group)
        self.bias_layer = next((m for m in self.base if m.bias is not None), None)
        if self.fused:
            rehome(self.base)
        if self.src:
            dev = self.src[0][1].device
            rank = sum(a.shape[0] for _, a, _, _ in self.src)
            self.A = torch.empty((rank, self.src[0][1].shape[1]), dtype=dtype, device=dev)
            if not self.fused:
                self.B = [torch.empty(b.shape, dtype=dtype, device=dev) for _, _, b, _ in self.src]
            else:  # one block-diagonal B over the group's outputs (the rows of a module without LoRA stay 0)
                self.B = [torch.zeros((sum(self.sizes), rank), dtype=dtype, device=dev)]
            scales = {scale for *_, scale in self.src}
            self.alpha = scales.pop() if len(scales) == 1 else None  # None: scales are folded into B

    def sync(self) -> None:
        A = self.A
        if A is None:
            return
        off = 0
        for j, (i, a, b, scale) in enumerate(self.src):
            r = a.shape[0]
            A[off : off + r].copy_(a)
            if not self.fused:
                self.B[j].copy_(b)
            else:
                row = sum(self.sizes[:i])
                block = self.B[0][row : row + b.shape[0], off : off + r]
                block.copy_(b if self.alpha is not None else b * scale)
            off += r

    def __call__(self, x: torch.Tensor, lora: bool) -> list[torch.Tensor]:
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        if self.fused:
            y = F.linear(x, *self._buffers())
            if lora and self.A is not None:
                y = torch.addmm(y, F.linear(x, self.A), self.B[0].t(), alpha=1.0 if self.alpha is None else self.alpha)
            return [part.reshape(*lead, -1) for part in y.split(self.sizes, dim=-1)]
        ys = [F.linear(x, m.weight, m.bias) for m in self.base]
        if lora and self.A is not None:
            t = F.linear(x, self.A)
            off = 0
            for (i, a, _, scale), b16 in zip(self.src, self.B):
                r = a.shape[0]
                ys[i] = torch.addmm(ys[i], t[:, off : off + r], b16.t(), alpha=scale)
                off += r
        return [y.view(*lead, -1) for y in ys]

    def _buffers(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The group's weight (and bias) buffer, seen through its layers' parameters (views from
        offset 0 of one storage). The engine keeps no reference of its own, so a model moved or
        re-weighted frees the old buffer; the fingerprint check rebuilds before the next decode."""
        w, rows = self.base[0].weight, sum(self.sizes)
        weight = w.as_strided((rows, w.shape[1]), (w.shape[1], 1), 0)
        bias = self.bias_layer.bias.as_strided((rows,), (1,), 0) if self.bias_layer is not None else None
        return weight, bias


@torch.no_grad()
def rehome(layers: list) -> None:
    """Move the weights (and biases) of `layers` into one buffer each, starting at its storage's
    offset 0, and make every layer's parameter a view of its rows. Costs one group's copy while
    it runs; afterwards the parameters hold the only references."""
    weight = torch.cat([m.weight.data for m in layers])
    # biases likewise; a layer without one (beside some with one) gets zeros no parameter views
    bias = None
    if any(m.bias is not None for m in layers):
        bias = torch.cat([m.bias.data if m.bias is not None else weight.new_zeros(m.weight.shape[0]) for m in layers])
    off = 0
    for m in layers:
        n = m.weight.shape[0]
        m.weight.data = weight[off : off + n]
        if m.bias is not None and bias is not None:
            m.bias.data = bias[off : off + n]
        off += n
