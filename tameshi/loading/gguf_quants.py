"""Dequantization of ggml tensor blocks to float32, in torch, so it also runs on CUDA tensors.

Each function takes the raw bytes as a uint8 tensor of shape [n_blocks, bytes_per_block] and returns
[n_blocks, elements_per_block] float32. The arithmetic follows gguf-py's reference (`gguf.quants`) op
for op, in float32, so the results are bit-identical to it (layouts: ggml `ggml-common.h`).
"""

from collections.abc import Callable

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from tameshi.errors import UnsupportedModelError

QK_K = 256


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The fp16 at byte `start` of each block, as float32 [n_blocks, 1]."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).to(torch.float32)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """Low nibbles of a run of bytes, then its high nibbles (ggml's order within a 32-element group), as
    float32. Writing both halves into one buffer saves two full-size temporaries over cat + cast."""
    k = qs.shape[-1]
    out = torch.empty(*qs.shape[:-1], 2 * k, dtype=torch.float32, device=qs.device)
    out[..., :k] = qs & 0x0F
    out[..., k:] = qs >> 4
    return out


def _f32(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float32)


def _f16_plain(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float16).to(torch.float32)


def _bf16(blocks: torch.Tensor) -> torch.Tensor:
    # bf16 is the top half of an f32: widen the bits and shift them up.
    bits = blocks.contiguous().view(torch.int16).to(torch.int32)
    return torch.bitwise_left_shift(bits, 16).view(torch.float32)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks, 0)
    return d * _nibbles(blocks[:, 2:18]).sub_(8)  # exact in float32, as gguf-py's int8 subtraction


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    return _nibbles(blocks[:, 4:20]).mul_(d).add_(m)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks, 0)
    q = blocks[:, 2:34].contiguous().view(torch.int8).to(torch.float32)
    return q.mul_(d)


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight 6-bit scales and mins packed into 12 bytes (Q4_K, Q5_K): `get_scale_min_k4` for all j at once."""
    s = scales.reshape(-1, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = _k_scale_min(blocks[:, 4:16])
    scale = (d * sc.to(torch.float32)).reshape(n, 8, 1)
    offset = (dmin * mn.to(torch.float32)).reshape(n, 8, 1)
    # Four chunks of 32 bytes; each gives 32 low-nibble then 32 high-nibble outputs.
    q = _nibbles(blocks[:, 16:144].reshape(n, 4, 32)).reshape(n, 8, 32)
    return q.mul_(scale).sub_(offset).reshape(n, QK_K)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    ql, qh = blocks[:, 0:128], blocks[:, 128:192]
    scales = blocks[:, 192:208].contiguous().view(torch.int8).to(torch.float32)
    d = _f16(blocks, 208)
    scale = (d * scales).reshape(n, QK_K // 16, 1)
    # Per half of 128 outputs: ql gives 64 bytes of low nibbles then high nibbles, qh 32 bytes of four 2-bit fields.
    ql = ql.reshape(n, 2, 64)
    low = torch.cat([ql & 0x0F, ql >> 4], dim=-1).reshape(n, 8, 32)
    qh = qh.reshape(n, 2, 1, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=blocks.device).reshape(1, 1, 4, 1)
    high = ((qh >> shifts) & 0x03).reshape(n, 8, 32)
    q = (low | (high << 4)).to(torch.int8) - 32
    return (scale * q.reshape(n, QK_K // 16, 16).to(torch.float32)).reshape(n, QK_K)


_DEQUANTIZERS: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    GGMLQuantizationType.F32: _f32,
    GGMLQuantizationType.F16: _f16_plain,
    GGMLQuantizationType.BF16: _bf16,
    GGMLQuantizationType.Q4_0: _q4_0,
    GGMLQuantizationType.Q4_1: _q4_1,
    GGMLQuantizationType.Q8_0: _q8_0,
    GGMLQuantizationType.Q4_K: _q4_k,
    GGMLQuantizationType.Q6_K: _q6_k,
}

SUPPORTED_TYPES = frozenset(_DEQUANTIZERS)


def dequantize(raw: torch.Tensor, qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    """Float32 tensor of `shape` (torch order) from the raw ggml bytes of one tensor, on raw's device.

    `raw` may have any dtype and shape; only its bytes count (the F32/F16 views gguf-py hands out work as is).
    """
    fn = _DEQUANTIZERS.get(qtype)
    if fn is None:
        name = getattr(qtype, "name", str(qtype))
        raise UnsupportedModelError(
            f"GGUF tensor type {name} is not supported (supported: F32, F16, BF16, "
            "Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)."
        )
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    n_elems = 1
    for dim in shape:
        n_elems *= int(dim)
    data = raw.contiguous().reshape(-1).view(torch.uint8)
    if n_elems % block_elems != 0 or data.numel() != n_elems // block_elems * block_bytes:
        raise ValueError(
            f"{data.numel()} bytes of {qtype.name} cannot hold a tensor of shape {tuple(shape)}."
        )
    blocks = data.reshape(-1, block_bytes)
    return fn(blocks).reshape(shape)
