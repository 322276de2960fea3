"""Linear layers. One interface for every weight format; kernels are picked here, not in the model.

A `Linear` may fuse several checkpoint matrices along its output (q/k/v, gate/up): each is a shard
with its own name in the checkpoint and its own row range in the fused weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tameshi.errors import CorruptCheckpointError
from tameshi.kernels.cpu_weight_only import INT4_GROUP, Int4Weight, Int8Weight


class Linear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_sizes: Sequence[int],
        bias: bool = False,
        shard_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_sizes = list(out_sizes)
        self.out_features = sum(out_sizes)
        names = list(shard_names) if shard_names is not None else [None]
        if len(names) != len(self.out_sizes):
            raise ValueError("one shard name per output size")
        offsets = [0]
        for n in self.out_sizes:
            offsets.append(offsets[-1] + n)
        self.shards = {name: (offsets[i], offsets[i + 1]) for i, name in enumerate(names)}
        self.weight = nn.Parameter(torch.empty(self.out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(self.out_features), requires_grad=False) if bias else None
        self.packed: Int8Weight | Int4Weight | None = None  # run-time weight-only form (CPU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            y = self.packed(x)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)

    def quantize(self, method: str) -> None:
        """Replace the loaded weight by its weight-only form: "int8", or "int4" (int8 where int4 cannot go)."""
        self.packed = quantize_weight(self.weight.data, method)
        self.weight = None

    def load(self, shard: str | None, kind: str, tensor: torch.Tensor, name: str) -> None:
        """Copy checkpoint tensor `name` (a `weight` or `bias`) into its shard's rows."""
        lo, hi = self.shards[shard]
        param = self.weight if kind == "weight" else self.bias
        if param is None:
            raise CorruptCheckpointError(f"checkpoint has {name}, but the config says this layer has no bias")
        expected = (hi - lo, self.in_features) if kind == "weight" else (hi - lo,)
        if tuple(tensor.shape) != expected:
            raise CorruptCheckpointError(
                f"tensor {name} has shape {list(tensor.shape)}, but the config implies {list(expected)}"
            )
        param.data[lo:hi].copy_(tensor)


def quantize_weight(weight: torch.Tensor, method: str) -> Int8Weight | Int4Weight:
    if method == "int4" and weight.shape[1] % INT4_GROUP == 0:
        return Int4Weight(weight)
    return Int8Weight(weight)
