"""Linear layers. One interface for every weight format; kernels are picked here, not in the model.

A layer may fuse several checkpoint matrices along its output (q/k/v, gate/up): each is a shard with
its own name in the checkpoint and its own range of output features. Every layer answers the same
calls: forward, load (one checkpoint tensor into its shard), tensor_kinds, quantize (CPU modes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from tameshi.errors import CorruptCheckpointError, UnsupportedModelError, first_line
from tameshi.kernels.cpu_weight_only import INT4_GROUP, Int4Weight, Int8Weight
from tameshi.loading.awq import AWQConfig, dequantize_gemm

if TYPE_CHECKING:
    from tameshi.kernels.awq_x16 import QuantizedX

log = logging.getLogger("tameshi")


class _ShardedLinear(nn.Module):
    def __init__(self, in_features: int, out_sizes: Sequence[int], shard_names: Sequence[str] | None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = sum(out_sizes)
        names = list(shard_names) if shard_names is not None else [None]
        if len(names) != len(out_sizes):
            raise ValueError("one shard name per output size")
        offsets = [0]
        for n in out_sizes:
            offsets.append(offsets[-1] + n)
        self.shards = {name: (offsets[i], offsets[i + 1]) for i, name in enumerate(names)}
        self.packed: Int8Weight | Int4Weight | None = None  # run-time weight-only form (CPU)
        # Set to float32 on tensor parallel's row-parallel layers: each rank's partial sum is handed
        # to the all-reduce unrounded, so the total is rounded to half precision once, as the one-GPU
        # matmul rounds it (rounding each half first flips near ties in greedy decoding).
        self.out_dtype: torch.dtype | None = None
        # Set by LlamaForCausalLM.set_batch_invariant: every row computed the same way whatever the
        # row count, so that a sequence's outputs do not depend on what it is batched with.
        self.batch_invariant = False

    def _copy(
        self, param: torch.Tensor | None, part: slice, dim: int, tensor: torch.Tensor, name: str
    ) -> None:
        if param is None:
            raise CorruptCheckpointError(f"checkpoint has {name}, but the config says this layer has none")
        target = param.data.narrow(dim, part.start, part.stop - part.start)
        if tensor.shape != target.shape:
            raise CorruptCheckpointError(
                f"tensor {name} has shape {list(tensor.shape)}, but the config implies {list(target.shape)}"
            )
        target.copy_(tensor)

    def _apply_packed(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.batch_invariant:
            y = in_fixed_rows(self.packed, x.reshape(-1, self.in_features))
            y = y.reshape(*x.shape[:-1], y.shape[-1])
        else:
            y = self.packed(x)
        return y if bias is None else y + bias

    def quantize(self, method: str) -> None:
        """Swap the loaded weight for its weight-only form: "int8", or "int4" (int8 where int4 cannot go)."""
        self.packed = quantize_weight(self.dense_weight(), method)
        self._drop_weight()

    def x16_block(self, x: torch.Tensor) -> int | None:
        """The block size in which this layer would take `x` quantized for the dp2a AWQ kernel
        (awq_x16.QuantizedX, written by the kernel that writes x: forward's `x_q`), or None where it
        would not use it. Only AWQLinear does, for one row on CUDA."""
        return None


class Linear(_ShardedLinear):
    def __init__(
        self,
        in_features: int,
        out_sizes: Sequence[int],
        bias: bool = False,
        shard_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(in_features, out_sizes, shard_names)
        self.weight = nn.Parameter(torch.empty(self.out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(self.out_features), requires_grad=False) if bias else None

    @property
    def tensor_kinds(self) -> list[str]:
        return ["weight"] + (["bias"] if self.bias is not None else [])

    def forward(self, x: torch.Tensor, x_q: QuantizedX | None = None) -> torch.Tensor:
        """y = x W^T (+ bias); `x_q` (x16_block) is never asked for here, and ignored."""
        if self.packed is not None:
            return self._apply_packed(x, self.bias)
        if self.out_dtype in (None, x.dtype) and not self.batch_invariant:
            return F.linear(x, self.weight, self.bias)
        dtype = self.out_dtype or x.dtype
        x2 = x.reshape(-1, self.in_features)
        w_t = self.weight.t()
        if self.batch_invariant:
            y = in_fixed_rows(lambda rows: matmul_to(rows, w_t, dtype), x2)
        else:
            y = matmul_to(x2, w_t, dtype)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def load(self, shard: str | None, kind: str, tensor: torch.Tensor, name: str) -> None:
        """Copy checkpoint tensor `name` (a `weight` or `bias`) into its shard's rows."""
        lo, hi = self.shards[shard]
        if kind not in ("weight", "bias"):
            raise CorruptCheckpointError(
                f"checkpoint has {name}, but the config says this layer is not quantized"
            )
        self._copy(self.weight if kind == "weight" else self.bias, slice(lo, hi), 0, tensor, name)

    def dense_weight(self) -> torch.Tensor:
        return self.weight.data

    def _drop_weight(self) -> None:
        self.weight = None


# Up to this many rows AWQLinear runs the fused Triton kernel; above, dequantize + cuBLAS.
FUSED_MAX_ROWS = 64


class AWQLinear(_ShardedLinear):
    """AutoAWQ 4-bit weights, kept packed in the GEMM layout (fused shards side by side along N).

    The CPU path dequantizes to the activation dtype and multiplies: the reference the CUDA kernels
    are held to. `--quantize int4` requantizes it once (32-wide groups) for torch's fast CPU kernel.
    """

    def __init__(
        self,
        in_features: int,
        out_sizes: Sequence[int],
        awq: AWQConfig,
        bias: bool = False,
        shard_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(in_features, out_sizes, shard_names)
        self.group_size = in_features if awq.group_size == -1 else awq.group_size
        if in_features % self.group_size or any(n % 8 for n in out_sizes):
            raise UnsupportedModelError(
                f"AWQ needs in_features divisible by the group size {self.group_size} and out_features by 8; "
                f"got {in_features} -> {list(out_sizes)}"
            )
        k, n, groups = in_features, self.out_features, in_features // self.group_size
        self.register_buffer("qweight", torch.empty(k, n // 8, dtype=torch.int32))
        self.register_buffer("qzeros", torch.empty(groups, n // 8, dtype=torch.int32))
        self.register_buffer("scales", torch.empty(groups, n, dtype=torch.float16))
        self.bias = nn.Parameter(torch.empty(n), requires_grad=False) if bias else None
        self.kernel_weight = None  # the Triton kernels' layout (KPacked), once repacked on CUDA

    @property
    def tensor_kinds(self) -> list[str]:
        return ["qweight", "qzeros", "scales"] + (["bias"] if self.bias is not None else [])

    def load(self, shard: str | None, kind: str, tensor: torch.Tensor, name: str) -> None:
        lo, hi = self.shards[shard]
        if kind == "weight":
            raise CorruptCheckpointError(
                f"checkpoint has a plain {name}, but its config says the layer is AWQ"
            )
        packed = slice(lo // 8, hi // 8)
        targets = {
            "qweight": (self.qweight, packed, 1),
            "qzeros": (self.qzeros, packed, 1),
            "scales": (self.scales, slice(lo, hi), 1),
            "bias": (self.bias, slice(lo, hi), 0),
        }
        param, part, dim = targets[kind]
        if kind in ("qweight", "qzeros") and tensor.dtype != torch.int32:
            raise CorruptCheckpointError(f"tensor {name} is {tensor.dtype}, but AWQ packs int32")
        self._copy(param, part, dim, tensor, name)

    def dense_weight(self) -> torch.Tensor:
        """[N, K] float32, like a plain Linear's weight."""
        if self.kernel_weight is not None:
            from tameshi.kernels.awq_triton import kdequantize_reference

            return kdequantize_reference(self.kernel_weight).t()
        return dequantize_gemm(self.qweight, self.qzeros, self.scales, self.group_size).t()

    def _drop_weight(self) -> None:
        for name in ("qweight", "qzeros", "scales"):
            setattr(self, name, None)

    def forward(self, x: torch.Tensor, x_q: QuantizedX | None = None) -> torch.Tensor:
        """y = x W^T (+ bias). `x_q`: x quantized for the dp2a kernel as x16_block asked (one row on CUDA)."""
        if self.packed is not None:
            return self._apply_packed(x, self.bias)
        if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
            return self._forward_triton(x, x_q)
        w_t = self.dense_weight().t().to(x.dtype)
        dtype = self.out_dtype or x.dtype
        if self.batch_invariant:
            x2 = x.reshape(-1, self.in_features)
            y = in_fixed_rows(lambda rows: matmul_to(rows, w_t, dtype), x2).reshape(*x.shape[:-1], -1)
        else:
            y = matmul_to(x, w_t, dtype)
        return y if self.bias is None else y + self.bias

    def repack_for_kernels(self) -> None:
        """Swap the checkpoint layout for the Triton kernels' (on the layer's CUDA device), in place."""
        from tameshi.kernels import awq_triton  # Triton is only needed, and only imported, on CUDA

        if self.kernel_weight is None:
            # paired nibbles: the one-row kernel's x pairs are single 4-byte loads (8% faster on an H200)
            self.kernel_weight = awq_triton.kpack(
                self.qweight, self.qzeros, self.scales, self.group_size, paired=True
            )
            self._drop_weight()

    def x16_block(self, x: torch.Tensor) -> int | None:
        # One row on CUDA, in half precision, where awq_matmul may run the dp2a kernel (x16_default),
        # not batch-invariant (one row must then run as every row count does).
        if (
            self.packed is not None
            or self.batch_invariant
            or not x.is_cuda
            or x.dtype not in (torch.float16, torch.bfloat16)
            or x.reshape(-1, x.shape[-1]).shape[0] != 1
        ):
            return None
        from tameshi.kernels import awq_triton, awq_x16

        self.repack_for_kernels()
        if not awq_triton.x16_default(self.kernel_weight):
            return None
        block = awq_x16.x16_unit(self.group_size)
        return block if self.in_features % block == 0 else None

    def _forward_triton(self, x: torch.Tensor, x_q: QuantizedX | None = None) -> torch.Tensor:
        from tameshi.kernels import awq_triton

        self.repack_for_kernels()
        x2 = x.reshape(-1, self.in_features)
        out_dtype = self.out_dtype or x.dtype
        if self.batch_invariant:  # the fused tile for every row count, prefill too
            k, n = self.kernel_weight.shape
            config = awq_triton.invariant_config(x2.shape[0], n, k, self.kernel_weight.group, x.dtype)
            y = awq_triton.awq_matmul(x2, self.kernel_weight, config, out_dtype=out_dtype)
        elif x2.shape[0] <= FUSED_MAX_ROWS:
            y = awq_triton.awq_matmul(x2, self.kernel_weight, out_dtype=out_dtype, x_q=x_q)
        else:  # prefill: a dense matrix on cuBLAS beats the fused kernel there (benchmarks/awq_kernels.py)
            y = matmul_to(x2, awq_triton.awq_dequantize(self.kernel_weight, x.dtype), out_dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def matmul_to(x: torch.Tensor, w_t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x @ w_t returned in `dtype` (float32 for a partial sum): on CUDA cuBLAS's own float32
    accumulator, unrounded; elsewhere the product of the operands cast up."""
    global _mm_out_dtype
    if x.dtype == dtype:
        return x @ w_t
    if x.is_cuda and x.dim() == 2 and _mm_out_dtype:
        try:
            return torch.mm(x, w_t, out_dtype=dtype)
        except (TypeError, RuntimeError) as e:  # a torch without it (added in 2.8)
            _mm_out_dtype = False
            log.warning("torch.mm has no out_dtype here (%s); partial sums are rounded first", first_line(e))
    if x.is_cuda:
        return (x @ w_t).to(dtype)
    return x.to(dtype) @ w_t.to(dtype)


_mm_out_dtype = True

# in_fixed_rows's block: every call it makes has this many rows
INVARIANT_ROWS = 64


def in_fixed_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """fn(x) for a row-wise fn, batch-invariant: x [M, K] in blocks of INVARIANT_ROWS rows, each
    copied into one zero-padded buffer, so that fn sees one shape and one alignment whatever M is.
    BLAS libraries pick their kernel (tiles, split K) by shape, and with it their order of sums: a
    row's result would otherwise change with the number of rows beside it."""
    m = x.shape[0]
    block = x.new_zeros(INVARIANT_ROWS, *x.shape[1:])
    parts = []
    for start in range(0, m, INVARIANT_ROWS):
        rows = min(INVARIANT_ROWS, m - start)
        block[:rows] = x[start : start + rows]
        if rows < INVARIANT_ROWS:
            block[rows:] = 0
        parts.append(fn(block)[:rows])
    return torch.cat(parts) if len(parts) != 1 else parts[0]


def make_linear(
    awq: AWQConfig | None,
    module: str,
    in_features: int,
    out_sizes: Sequence[int],
    bias: bool = False,
    shard_names: Sequence[str] | None = None,
) -> Linear | AWQLinear:
    """The layer for checkpoint module `module` (its first shard's name): AWQ unless the config skips it."""
    if awq is not None and awq.converts(module):
        return AWQLinear(in_features, out_sizes, awq, bias, shard_names)
    return Linear(in_features, out_sizes, bias, shard_names)


def quantize_weight(weight: torch.Tensor, method: str) -> Int8Weight | Int4Weight:
    # torch's int4 packing wants whole groups along K and output rows in multiples of 16
    if method == "int4" and weight.shape[1] % INT4_GROUP == 0 and weight.shape[0] % 16 == 0:
        return Int4Weight(weight)
    return Int8Weight(weight)
