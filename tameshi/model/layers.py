"""Building blocks of a Llama-family decoder: RMSNorm, RoPE (with scaling), attention, SwiGLU MLP.

Tokens are flattened: every module takes [T, ...] for the T tokens of the step, whatever sequences
they belong to. Where keys and values are stored, and how attention over them is computed, is the
business of the `AttentionBackend` passed in by the engine; the model knows nothing of caches.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from tameshi.model.config import ModelConfig, RopeConfig
from tameshi.model.linear import make_linear

if TYPE_CHECKING:
    from tameshi.kernels.awq_x16 import QuantizedX
    from tameshi.parallel.group import TensorParallel


class AttentionBackend(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store k, v [T, n_kv_heads, head_dim] for `layer`; return attention of q [T, n_heads, head_dim]."""
        ...

    def attend_x16(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, QuantizedX | None]:
        """attend, and its output [T, n_heads · head_dim] quantized for the dp2a AWQ kernel in blocks of
        one head (awq_x16.QuantizedX) where this backend's kernel writes that too; else None."""
        ...


def _fused_kernels(x: torch.Tensor):
    """tameshi.kernels.fused where x runs on CUDA in half precision; None elsewhere (the PyTorch code
    here is then the path, and the reference the kernels are tested against). Imported lazily: Triton
    is needed on CUDA only."""
    if not x.is_cuda or x.dtype not in (torch.float16, torch.bfloat16):
        return None
    from tameshi.kernels import fused

    return fused


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def add_norm(self, x: torch.Tensor, delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual add and this norm: (x + delta, norm(x + delta)); one kernel on CUDA."""
        fused = _fused_kernels(x)
        if fused is not None and x.dim() == 2:
            return fused.add_rms_norm(x, delta, self.weight, self.eps)
        if delta is not None:
            x = x + delta
        return x, self(x)

    def add_norm_x16(
        self, x: torch.Tensor, delta: torch.Tensor | None, block: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, QuantizedX | None]:
        """add_norm, and with `block` (the next linear's x16_block) the output quantized for that
        linear by the same kernel, where the fused kernels run; else None in third place."""
        fused = _fused_kernels(x)
        if block is not None and fused is not None and x.dim() == 2:
            return fused.add_rms_norm_x16(x, delta, self.weight, self.eps, block)
        return (*self.add_norm(x, delta), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused op
        # In float32, then cast back before the weight, exactly as transformers does in half precision.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(rope: RopeConfig, head_dim: int, max_positions: int, seq_len: int) -> torch.Tensor:
    """Inverse frequencies [head_dim/2] in float32, following transformers' rope_type formulas."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    base = rope.theta
    if rope.type == "dynamic":
        # NTK-aware: the base grows once the sequence passes the trained length.
        seq_len = max(seq_len, max_positions)
        base = base * ((rope.factor * seq_len / max_positions) - (rope.factor - 1)) ** (
            head_dim / (head_dim - 2)
        )
    inv_freq = 1.0 / (base**exponent)
    if rope.type == "linear":
        inv_freq = inv_freq / rope.factor
    elif rope.type == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, rope)
    return inv_freq


def _llama3_inv_freq(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    old_len = rope.original_max_position_embeddings or 8192
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin for given positions; a table is cached per device for the static rope types."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.rope = config.rope
        self.head_dim = config.head_dim
        self.max_positions = config.max_position_embeddings
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rope.type == "dynamic":
            # Stateless version of transformers' update: frequencies follow the longest position in the step.
            seq_len = int(positions.max()) + 1 if positions.numel() else 1
            inv_freq = rope_inv_freq(self.rope, self.head_dim, self.max_positions, seq_len)
            return _cos_sin(positions.float()[:, None] * inv_freq.to(positions.device)[None], dtype)
        key = (positions.device, dtype)
        if key not in self._tables:
            inv_freq = rope_inv_freq(self.rope, self.head_dim, self.max_positions, self.max_positions)
            pos = torch.arange(self.max_positions, dtype=torch.float32)
            self._tables[key] = tuple(
                t.to(positions.device) for t in _cos_sin(pos[:, None] * inv_freq[None], dtype)
            )
        cos, sin = self._tables[key]
        return cos[positions], sin[positions]


def _cos_sin(freqs: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, head_dim]; the rotate-half convention of HF checkpoints (not the interleaved one)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class Attention(nn.Module):
    """`config` gives this rank's heads; under tensor parallel (`tp`) o_proj's partial sums are
    all-reduced: the block's one collective."""

    def __init__(self, config: ModelConfig, layer: int, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.tp = tp
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.n_kv_heads * self.head_dim
        # q, k and v in one matmul: one kernel launch instead of three, same numbers.
        prefix = f"model.layers.{layer}.self_attn."
        self.qkv_proj = make_linear(
            config.awq,
            prefix + "q_proj",
            config.hidden_size,
            [self.q_size, self.kv_size, self.kv_size],
            bias=config.qkv_bias,
            shard_names=("q_proj", "k_proj", "v_proj"),
        )
        self.o_proj = make_linear(
            config.awq, prefix + "o_proj", self.q_size, [config.hidden_size], config.o_bias
        )
        if tp is not None:
            self.o_proj.out_dtype = torch.float32  # partial sums added unrounded (linear.py)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        backend: AttentionBackend,
        x_q: QuantizedX | None = None,
    ) -> torch.Tensor:
        """`x_q`: x quantized as qkv_proj.x16_block asked, by the norm before (or None)."""
        qkv = self.qkv_proj(x, x_q)
        t = x.shape[0]
        # q and k heads side by side: one rotation for both
        qk = qkv[:, : self.q_size + self.kv_size].view(t, -1, self.head_dim)
        fused = _fused_kernels(qk)
        qk = fused.rope_(qk, cos, sin) if fused is not None else apply_rope(qk, cos, sin)
        q, k = qk.split([self.n_heads, self.n_kv_heads], dim=1)
        v = qkv[:, self.q_size + self.kv_size :].view(t, self.n_kv_heads, self.head_dim)
        if self.o_proj.x16_block(x) == self.head_dim:  # the merge kernel quantizes by head
            attn, attn_q = backend.attend_x16(self.layer, q, k, v)
        else:
            attn, attn_q = backend.attend(self.layer, q, k, v), None
        out = self.o_proj(attn.reshape(t, self.q_size), attn_q)
        return out if self.tp is None else self.tp.all_reduce(out).to(x.dtype)


class MLP(nn.Module):
    """Under tensor parallel, this rank's slice of the intermediate features; one all-reduce."""

    def __init__(self, config: ModelConfig, layer: int, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.tp = tp
        self.intermediate_size = config.intermediate_size
        prefix = f"model.layers.{layer}.mlp."
        self.gate_up_proj = make_linear(
            config.awq,
            prefix + "gate_proj",
            config.hidden_size,
            [config.intermediate_size, config.intermediate_size],
            bias=config.mlp_bias,
            shard_names=("gate_proj", "up_proj"),
        )
        self.down_proj = make_linear(
            config.awq, prefix + "down_proj", config.intermediate_size, [config.hidden_size], config.mlp_bias
        )
        if tp is not None:
            self.down_proj.out_dtype = torch.float32  # partial sums added unrounded (linear.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        fused = _fused_kernels(gate_up)
        if fused is not None and gate_up.dim() == 2:
            out = self.down_proj(fused.silu_mul(gate_up))
        else:
            gate, up = gate_up.split(self.intermediate_size, dim=-1)
            out = self.down_proj(F.silu(gate) * up)
        return out if self.tp is None else self.tp.all_reduce(out).to(x.dtype)
