"""Decode attention over the paged KV pool in Triton: one query token per sequence.

Every input is a tensor (block tables, context lengths), none a Python number, so a decode step can
be captured in a CUDA graph once and replayed for any lengths up to the captured table width.

Work is split flash-decoding style: a program per (sequence, KV head, split). The context is cut
into chunks of CHUNK tokens (several cache blocks, gathered in one load, so one program has a whole
chunk's keys in flight at once); split s takes chunks s, s + SPLITS, s + 2·SPLITS, ... With one
sequence and 8 KV heads there would otherwise be 8 programs for 132 SMs, each walking its context
block by block. Each program takes all query heads that share its KV head (GQA), keeps a running
max and sum (online softmax), and writes an unnormalized partial; `paged_decode_attention` merges
the partials by their log-sum-exp. SPLITS is fixed, not chosen by batch size, so a sequence's sums
are taken in the same order whatever else is in the batch: batched and solo decodes agree.

`paged_decode_reference` is the PyTorch version (gather the blocks, masked SDPA): the CPU path and
the tests' oracle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from tameshi.kernels.awq_x16 import QuantizedX, _quantize_tile
from tameshi.kernels.fused import pdl_launch, pdl_start

CHUNK = 64  # context tokens a program loads at once
SPLITS = 16  # programs per (sequence, KV head); together they cover SPLITS * CHUNK tokens a round


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, acc_ptr, max_ptr, sum_ptr, scale, stride_table, stride_q,
    N_HEADS: tl.constexpr, N_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    GROUP_PAD: tl.constexpr, CHUNK: tl.constexpr, SPLITS: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    pdl_start(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ctx_len = tl.load(lens_ptr + seq)
    pos = split * CHUNK
    if pos < ctx_len:  # else this split has no chunk: the merge skips it
        group: tl.constexpr = N_HEADS // N_KV_HEADS
        rows = tl.arange(0, GROUP_PAD)  # query heads of this KV head, padded for the dot
        heads = kv_head * group + rows
        dims = tl.arange(0, HEAD_DIM)
        row_ok = rows < group
        q = tl.load(
            q_ptr + seq * stride_q + heads[:, None] * HEAD_DIM + dims[None, :],
            mask=row_ok[:, None],
            other=0.0,
        )
        m = tl.full((GROUP_PAD,), float("-inf"), tl.float32)
        s = tl.zeros((GROUP_PAD,), tl.float32)
        acc = tl.zeros((GROUP_PAD, HEAD_DIM), tl.float32)
        offs = tl.arange(0, CHUNK)
        # A while loop: its bound is a tensor (Triton's interpreter cannot take one in range()).
        while pos < ctx_len:
            p_ok = pos + offs < ctx_len
            block = tl.load(tables_ptr + seq * stride_table + (pos + offs) // BLOCK_SIZE, mask=p_ok, other=0)
            slots = block * BLOCK_SIZE + (pos + offs) % BLOCK_SIZE
            kv_off = (slots * N_KV_HEADS + kv_head)[:, None] * HEAD_DIM + dims[None, :]
            keys = tl.load(k_ptr + kv_off, mask=p_ok[:, None], other=0.0)
            values = tl.load(v_ptr + kv_off, mask=p_ok[:, None], other=0.0)
            scores = tl.dot(q, tl.trans(keys)).to(tl.float32) * scale  # [GROUP_PAD, CHUNK]
            scores = tl.where(p_ok[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            p = tl.exp(scores - m_new[:, None])
            alpha = tl.exp(m - m_new)
            s = s * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(values.dtype), values).to(tl.float32)
            m = m_new
            pos += SPLITS * CHUNK

        part = (seq * N_HEADS + heads) * SPLITS + split
        tl.store(acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_ok[:, None])
        tl.store(max_ptr + part, m, mask=row_ok)
        tl.store(sum_ptr + part, s, mask=row_ok)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
) -> torch.Tensor:
    """q [B, H, D]; caches [slots, KVH, D] of one layer; block_tables [B, W] int32; context_lens [B]
    int32 (each >= 1, <= W * block_size). Returns [B, H, D] in q's dtype."""
    return paged_decode_attention_x16(q, k_cache, v_cache, block_tables, context_lens, block_size, False)[0]


def paged_decode_attention_x16(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    quantize: bool = True,
) -> tuple[torch.Tensor, QuantizedX | None]:
    """paged_decode_attention, and its output [B, H·D] quantized for the dp2a AWQ kernel in blocks
    of one head (awq_x16.QuantizedX), by the merge kernel: the o projection needs no quantize_x.
    `quantize` False: the output alone (None in second place)."""
    b, n_heads, head_dim = q.shape
    n_kv_heads = k_cache.shape[1]
    acc = torch.empty(b, n_heads, SPLITS, head_dim, device=q.device, dtype=torch.float32)
    row_max = torch.empty(b, n_heads, SPLITS, device=q.device, dtype=torch.float32)
    row_sum = torch.empty_like(row_max)
    group = n_heads // n_kv_heads
    if q.stride(2) != 1 or q.stride(1) != head_dim:
        q = q.contiguous()
    _paged_decode_kernel[(b, n_kv_heads, SPLITS)](
        q, k_cache, v_cache, block_tables, context_lens, acc, row_max, row_sum,
        1.0 / math.sqrt(head_dim), block_tables.stride(0), q.stride(0),
        N_HEADS=n_heads, N_KV_HEADS=n_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        GROUP_PAD=max(16, triton.next_power_of_2(group)), CHUNK=CHUNK, SPLITS=SPLITS, **pdl_launch(q.device),
    )  # fmt: skip
    out = torch.empty(b, n_heads, head_dim, device=q.device, dtype=q.dtype)
    x_q = QuantizedX.empty(b, n_heads * head_dim, head_dim, q.device) if quantize else None
    _merge_kernel[(b, n_heads)](
        acc, row_max, row_sum, context_lens, out, *(x_q if x_q is not None else (out, out, out)), HEAD_DIM=head_dim, CHUNK=CHUNK,
        SPLITS=SPLITS, X16=quantize, **pdl_launch(q.device),
    )  # fmt: skip
    return out, x_q


@triton.jit
def _merge_kernel(
    acc_ptr, max_ptr, sum_ptr, lens_ptr, out_ptr, q_ptr, qs_ptr, qsum_ptr, HEAD_DIM: tl.constexpr,
    CHUNK: tl.constexpr, SPLITS: tl.constexpr, X16: tl.constexpr = False, PDL: tl.constexpr = False,
):  # fmt: skip
    """Merge one head's splits, weights exp(m_i - max m); the splits that had no chunk wrote nothing.
    X16: also the head's output (as rounded to out's dtype) quantized as one block of the dp2a AWQ
    kernel's x (awq_x16.QuantizedX, the values quantize_x would write)."""
    pdl_start(PDL)
    seq = tl.program_id(0)
    row = seq * tl.num_programs(1) + tl.program_id(1)  # (seq, head)
    splits = tl.arange(0, SPLITS)
    ok = splits * CHUNK < tl.load(lens_ptr + seq)
    dims = tl.arange(0, HEAD_DIM)
    m = tl.load(max_ptr + row * SPLITS + splits, mask=ok, other=float("-inf"))
    s = tl.load(sum_ptr + row * SPLITS + splits, mask=ok, other=0.0)
    acc = tl.load(
        acc_ptr + (row * SPLITS + splits)[:, None] * HEAD_DIM + dims[None, :], mask=ok[:, None], other=0.0
    )
    w = tl.exp(m - tl.max(m, axis=0))
    out = (tl.sum(acc * w[:, None], axis=0) / tl.sum(s * w, axis=0)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * HEAD_DIM + dims, out)
    if X16:
        head = tl.full((1,), 0, tl.int32) + tl.program_id(1)
        heads = tl.num_programs(1)
        _quantize_tile(
            out.to(tl.float32)[None, :], head, head >= 0, q_ptr + seq * heads * HEAD_DIM, qs_ptr + seq * heads,
            qsum_ptr + seq * heads, HEAD_DIM,
        )  # fmt: skip


def paged_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
) -> torch.Tensor:
    """The same in PyTorch: gather each sequence's blocks and attend with a length mask."""
    b, width = block_tables.shape
    n_blocks = k_cache.shape[0] // block_size
    paged_k = k_cache.view(n_blocks, block_size, *k_cache.shape[1:])
    paged_v = v_cache.view(n_blocks, block_size, *v_cache.shape[1:])
    tables = block_tables.long()
    keys = paged_k[tables].view(b, width * block_size, *k_cache.shape[1:]).transpose(1, 2)
    values = paged_v[tables].view(b, width * block_size, *v_cache.shape[1:]).transpose(1, 2)
    mask = torch.arange(width * block_size, device=q.device)[None, :] < context_lens[:, None]
    out = F.scaled_dot_product_attention(
        q[:, :, None],
        keys,
        values,
        attn_mask=mask[:, None, None, :],
        enable_gqa=q.shape[1] != k_cache.shape[1],
    )
    return out[:, :, 0]
