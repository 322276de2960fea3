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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

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

    def expected_tensors(self, prefix: str) -> list[str]:
        """Checkpoint names this layer must receive, given the module prefix of its first shard's parent."""
        kinds = ["weight"] + (["bias"] if self.bias is not None else [])
        return [f"{prefix}{s + '.' if s else ''}{k}" for s in self.shards for k in kinds]
