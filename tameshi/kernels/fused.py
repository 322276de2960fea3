"""Small fused kernels for the decoder's elementwise work on CUDA (fp16/bf16).

At batch 1 a decode step is mostly tiny kernels: an RMSNorm in PyTorch is seven of them, RoPE five,
SwiGLU's activation two. Each costs a couple of microseconds even inside a CUDA graph, which over
95 layers is several milliseconds a token. These do each job in one kernel, with the roundings of
the PyTorch code they replace (fp32 inside, the activation dtype at the same points), so the eager
reference and the fused path give the same numbers up to the last bit of an exp.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tameshi.kernels import pdl
from tameshi.kernels.awq_x16 import QuantizedX, _quantize_tile


def pdl_launch(device: torch.device) -> dict:
    """The launch arguments of a kernel that takes PDL (tameshi.kernels): on, where it can be."""
    return {"PDL": True, "launch_pdl": True} if pdl(device) else {}


@triton.jit
def pdl_start(PDL: tl.constexpr):
    """A PDL kernel's first step when it reads nothing ahead: let the next kernel launch, then wait
    for the one before (its writes are visible after)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()


@triton.jit
def _rounded_sum(x, delta):
    """The residual add, rounded to the activation dtype as `x + delta` in PyTorch is."""
    return (x.to(tl.float32) + delta.to(tl.float32)).to(x.dtype)


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, delta_ptr, w_ptr, sum_ptr, out_ptr, n, eps, HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr,
    PDL: tl.constexpr = False,
):  # fmt: skip
    pdl_start(PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(x_ptr + row * n + cols, mask=mask, other=0.0)
    if HAS_DELTA:
        x = _rounded_sum(x, tl.load(delta_ptr + row * n + cols, mask=mask, other=0.0))
        tl.store(sum_ptr + row * n + cols, x, mask=mask)
    h = x.to(tl.float32)
    h = h * tl.math.rsqrt(tl.sum(h * h, axis=0) / n + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    # as transformers: normalized in fp32, cast to the dtype, then times the weight (in the dtype)
    tl.store(
        out_ptr + row * n + cols, (w.to(tl.float32) * h.to(x.dtype).to(tl.float32)).to(x.dtype), mask=mask
    )


@triton.jit
def _add_rms_norm_x16_kernel(
    x_ptr, delta_ptr, w_ptr, sum_ptr, out_ptr, q_ptr, qs_ptr, qsum_ptr, n, eps, HAS_DELTA: tl.constexpr,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr, XB: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    """Program (row, part): _add_rms_norm_kernel's sum of squares over the whole row (the same loads
    and sum, so the same bits), then the residual sum, output and output quantized in blocks of XB for
    the dp2a AWQ kernel (awq_x16.QuantizedX) of its CHUNK values only. In one program a row the
    scattered int16 stores of the whole row took ~10 µs on an H200; split, each part stores a slice."""
    pdl_start(PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(x_ptr + row * n + cols, mask=mask, other=0.0)
    if HAS_DELTA:
        x = _rounded_sum(x, tl.load(delta_ptr + row * n + cols, mask=mask, other=0.0))
    h = x.to(tl.float32)
    inv = tl.math.rsqrt(tl.sum(h * h, axis=0) / n + eps)
    part = tl.program_id(1) * CHUNK + tl.arange(0, CHUNK)
    at = row * n + part
    mine = tl.load(x_ptr + at)
    if HAS_DELTA:
        mine = _rounded_sum(mine, tl.load(delta_ptr + at))
        tl.store(sum_ptr + at, mine)
    w = tl.load(w_ptr + part)
    out = (w.to(tl.float32) * (mine.to(tl.float32) * inv).to(mine.dtype).to(tl.float32)).to(mine.dtype)
    tl.store(out_ptr + at, out)
    nb = n // XB
    blocks = tl.program_id(1) * (CHUNK // XB) + tl.arange(0, CHUNK // XB)
    tile = tl.reshape(out.to(tl.float32), (CHUNK // XB, XB))
    _quantize_tile(tile, blocks, blocks < nb, q_ptr + row * n, qs_ptr + row * nb, qsum_ptr + row * nb, XB)


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + delta, rms_norm(x + delta) * weight) in one pass; delta None: (x, rms_norm(x) * weight)."""
    rows, n = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    total = torch.empty_like(x) if delta is not None else x
    _add_rms_norm_kernel[(rows,)](
        x, delta.contiguous() if delta is not None else x, weight, total, out, n, eps,
        HAS_DELTA=delta is not None, BLOCK=triton.next_power_of_2(n), num_warps=8 if n >= 4096 else 4,
        **pdl_launch(x.device),
    )  # fmt: skip
    return total, out


def add_rms_norm_x16(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float, block: int
) -> tuple[torch.Tensor, torch.Tensor, QuantizedX]:
    """add_rms_norm, and its output quantized for the dp2a AWQ kernel in blocks of `block` (a power
    of two dividing the row), by one kernel: the next linear needs no quantize_x launch."""
    rows, n = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    if block & (block - 1) or n % block:
        raise ValueError(
            f"blocks of {block} of a row of {n}: the block must be a power of two dividing the row"
        )
    total = torch.empty_like(x) if delta is not None else x
    x_q = QuantizedX.empty(rows, n, block, x.device)
    chunk = next(c for c in (1024, 512, 256, 128, 64, 32, 16, 8) if n % c == 0 and c % block == 0)
    _add_rms_norm_x16_kernel[(rows, n // chunk)](
        x, delta.contiguous() if delta is not None else x, weight, total, out, *x_q, n, eps,
        HAS_DELTA=delta is not None, BLOCK=triton.next_power_of_2(n), CHUNK=chunk, XB=block,
        num_warps=8 if n >= 4096 else 4, **pdl_launch(x.device),
    )  # fmt: skip
    return total, out, x_q


@triton.jit
def _rope_kernel(
    qk_ptr, cos_ptr, sin_ptr, row_stride, HEAD_DIM: tl.constexpr, HALF: tl.constexpr, PDL: tl.constexpr = False
):  # fmt: skip
    pdl_start(PDL)
    token = tl.program_id(0)
    head = tl.program_id(1)
    i = tl.arange(0, HALF)
    base = qk_ptr + token * row_stride + head * HEAD_DIM
    x1 = tl.load(base + i)
    x2 = tl.load(base + HALF + i)
    c1 = tl.load(cos_ptr + token * HEAD_DIM + i).to(tl.float32)
    c2 = tl.load(cos_ptr + token * HEAD_DIM + HALF + i).to(tl.float32)
    s1 = tl.load(sin_ptr + token * HEAD_DIM + i).to(tl.float32)
    s2 = tl.load(sin_ptr + token * HEAD_DIM + HALF + i).to(tl.float32)
    dt = x1.dtype
    a1, a2 = x1.to(tl.float32), x2.to(tl.float32)
    # x*cos + rotate_half(x)*sin with PyTorch's roundings: each product, then the sum, in the dtype
    o1 = ((a1 * c1).to(dt).to(tl.float32) + (-a2 * s1).to(dt).to(tl.float32)).to(dt)
    o2 = ((a2 * c2).to(dt).to(tl.float32) + (a1 * s2).to(dt).to(tl.float32)).to(dt)
    tl.store(base + i, o1)
    tl.store(base + HALF + i, o2)


def rope_(qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate qk [T, heads, head_dim] in place (rotate-half convention); cos, sin [T, head_dim]."""
    t, heads, head_dim = qk.shape
    if qk.stride(2) != 1 or qk.stride(1) != head_dim:
        raise ValueError("rope_ needs each token's heads contiguous")
    _rope_kernel[(t, heads)](
        qk, cos.contiguous(), sin.contiguous(), qk.stride(0), HEAD_DIM=head_dim, HALF=head_dim // 2,
        **pdl_launch(qk.device),
    )  # fmt: skip
    return qk


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, n, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    pdl_start(PDL)
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    gate = tl.load(gu_ptr + row * 2 * n + cols, mask=mask, other=0.0)
    up = tl.load(gu_ptr + row * 2 * n + n + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)  # F.silu, rounded to the dtype
    tl.store(out_ptr + row * n + cols, (act.to(tl.float32) * up.to(tl.float32)).to(gate.dtype), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up [T, 2n] (gate first), one kernel."""
    rows, two_n = gate_up.shape
    n = two_n // 2
    gate_up = gate_up.contiguous()
    out = torch.empty(rows, n, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(n, block))](gate_up, out, n, BLOCK=block, **pdl_launch(out.device))
    return out


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, slots_ptr, k_cache_ptr, v_cache_ptr, k_stride, v_stride, SIZE: tl.constexpr,
    PDL: tl.constexpr = False,
):  # fmt: skip
    pdl_start(PDL)
    token = tl.program_id(0)
    cols = tl.arange(0, SIZE)
    slot = tl.load(slots_ptr + token).to(tl.int64)
    tl.store(k_cache_ptr + slot * SIZE + cols, tl.load(k_ptr + token * k_stride + cols))
    tl.store(v_cache_ptr + slot * SIZE + cols, tl.load(v_ptr + token * v_stride + cols))


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """k_cache[slots] = k and v_cache[slots] = v in one kernel: k, v [T, KVH, D] (each token's heads
    contiguous, e.g. views of the qkv projection); caches [slots, KVH, D] contiguous."""
    t, kv_heads, head_dim = k.shape
    size = kv_heads * head_dim
    for x in (k, v):
        if x.stride(2) != 1 or x.stride(1) != head_dim:
            raise ValueError("store_kv needs each token's heads contiguous")
    if size & (size - 1):  # not a power of two: one arange cannot span it
        k_cache.index_copy_(0, slots, k)
        v_cache.index_copy_(0, slots, v)
        return
    _store_kv_kernel[(t,)](
        k, v, slots, k_cache, v_cache, k.stride(0), v.stride(0), SIZE=size, **pdl_launch(k.device)
    )
