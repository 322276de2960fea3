"""Weight-only quantized matmuls for CPU decode, on torch's own packed kernels.

Batch-1 decode on a CPU reads every weight once per token and is bound by memory bandwidth, so
fewer weight bytes is the speed. Both forms compute with bf16 activations (the only dtype these
kernels are fast for) and return the caller's dtype. Each comes with its dequantized PyTorch
reference, which the tests hold the packed kernel to.

They change the numbers slightly, so they are opt-in (`--quantize int8|int4`), never the default.
"""

from __future__ import annotations

import torch

INT4_GROUP = 32  # the group of GGUF Q4_0/Q4_1: a Q4_1 weight round-trips through Int4Weight


class Int8Weight:
    """int8 with one scale per output row: a quarter of fp32's bytes."""

    def __init__(self, weight: torch.Tensor) -> None:
        w = weight.float()
        # Round the scale to bf16 first and quantize against the rounded scale: rounding it afterwards
        # would scale the whole row wrongly by up to 0.4%.
        scale = (w.abs().amax(dim=1).clamp(min=1e-12) / 127).to(torch.bfloat16)
        self.qweight = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.scale = scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scale)
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)

    def dequantize(self) -> torch.Tensor:
        """The reference: what the packed kernel multiplies by, in float32."""
        return self.qweight.float() * self.scale.float()[:, None]


def int4_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight [n, k] -> q int32 [n, k] in 0..15, scale and zero bf16 [n, k/32]; w ≈ (q - 8) * scale + zero.

    Scale and zero come from each group's min and max, so a weight that came from a Q4_1 block
    (w = d * q + m with q spanning 0..15) is recovered up to the bf16 rounding of d and m.
    """
    n, k = weight.shape
    if k % INT4_GROUP:
        raise ValueError(f"int4 needs in_features divisible by {INT4_GROUP}, got {k}")
    w = weight.float().reshape(n, k // INT4_GROUP, INT4_GROUP)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12).to(torch.bfloat16)
    zero = (lo + 8 * scale.float()).to(torch.bfloat16)
    # quantize against the rounded scale and zero, so their rounding is absorbed where it can be
    base = zero.float() - 8 * scale.float()
    q = torch.round((w - base[..., None]) / scale.float()[..., None]).clamp(0, 15).to(torch.int32)
    return q.reshape(n, k), scale, zero


def int4_dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The reference: what the packed kernel multiplies by, in float32."""
    n, k = q.shape
    grouped = q.float().reshape(n, k // INT4_GROUP, INT4_GROUP)
    return ((grouped - 8) * scale.float()[..., None] + zero.float()[..., None]).reshape(n, k)


class Int4Weight:
    """4-bit, asymmetric, one bf16 scale and zero per 32 inputs (`int4_quantize`): 1/8 of fp32's bytes."""

    def __init__(self, weight: torch.Tensor) -> None:
        q, scale, zero = int4_quantize(weight)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
        self.scale_zero = torch.stack([scale.t(), zero.t()], dim=-1).contiguous()  # [k/32, n, 2]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, INT4_GROUP, self.scale_zero)
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)
