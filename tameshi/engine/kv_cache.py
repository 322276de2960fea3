"""A contiguous per-sequence KV cache with a PyTorch attention path (CPU and CUDA).

The engine hands this to the model as its `AttentionBackend`. The paged cache replaces it for
batched serving; both answer `attend` the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from tameshi.model.config import ModelConfig

if TYPE_CHECKING:
    from tameshi.kernels.awq_x16 import QuantizedX


class ContiguousKVCache:
    def __init__(self, config: ModelConfig, capacity: int, device: torch.device, dtype: torch.dtype) -> None:
        shape = (config.n_layers, config.n_kv_heads, capacity, config.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.capacity = capacity
        self.length = 0  # tokens stored by finished steps
        self._start = 0
        self._n_new = 0
        self._mask: torch.Tensor | None = None

    def begin_step(self, n_new: int) -> None:
        if self.length + n_new > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} tokens; step needs {self.length + n_new}")
        self._start, self._n_new = self.length, n_new
        self._mask = None
        if n_new > 1 and self._start > 0:
            # New tokens see every cached token and the new ones up to themselves.
            q_pos = torch.arange(self._start, self._start + n_new, device=self.k.device)
            k_pos = torch.arange(self._start + n_new, device=self.k.device)
            self._mask = k_pos[None, :] <= q_pos[:, None]

    def end_step(self) -> None:
        self.length += self._n_new

    def attend_x16(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, QuantizedX | None]:
        return self.attend(layer, q, k, v), None  # no kernel here writes the quantized form

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        start, end = self._start, self._start + self._n_new
        self.k[layer, :, start:end] = k.transpose(0, 1)
        self.v[layer, :, start:end] = v.transpose(0, 1)
        keys = self.k[layer, :, :end].unsqueeze(0)
        values = self.v[layer, :, :end].unsqueeze(0)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0),
            keys,
            values,
            attn_mask=self._mask,
            # top-left causal alignment is right only when the cache was empty before this step
            is_causal=self._n_new > 1 and start == 0,
            enable_gqa=q.shape[1] != k.shape[1],
        )
        return out[0].transpose(0, 1)
