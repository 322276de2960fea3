"""Which slice of each checkpoint tensor a tensor-parallel rank keeps, and the per-rank model shape.

Megatron's split, for a Llama block on `world` ranks:
- column-parallel (q/k/v, gate/up): output features split; rank r holds whole heads r*n/world ...
  (q and k/v alike, so each rank's query heads find their KV heads locally under GQA).
- row-parallel (o_proj, down_proj): input features split; the partial outputs are summed by one
  all-reduce per block. A bias is added once, so only rank 0 keeps it (the others hold zeros).
- vocab-parallel (embedding, lm_head): rows of the vocabulary split.
- everything else (the norms) replicated.

AWQ GEMM tensors split the same way in their own layout: qweight [K, N/8], qzeros [K/G, N/8] and
scales [K/G, N] split along N (packed columns: whole words of 8) for column-parallel and along K (whole
groups of G rows) for row-parallel, so no rank ever holds part of a quantization group.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from tameshi.errors import UnsupportedModelError
from tameshi.model.config import ModelConfig

_COLUMN = re.compile(r".*\.(self_attn\.[qkv]_proj|mlp\.(gate|up)_proj)\.\w+")
_ROW = re.compile(r".*\.(self_attn\.o_proj|mlp\.down_proj)\.\w+")
_VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


def check_shardable(config: ModelConfig, world: int) -> None:
    """Raise a one-line UnsupportedModelError if the model cannot be split over `world` ranks."""
    if world < 1:
        raise UnsupportedModelError(f"--tp must be at least 1, not {world}")
    sizes = {
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "intermediate_size": config.intermediate_size,
        "vocab_size": config.vocab_size,
    }
    for key, size in sizes.items():
        if size % world:
            raise UnsupportedModelError(f"{key} {size} is not divisible by --tp {world}")
    awq = config.awq
    if awq is None:
        return
    q_size, kv_size = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    for name, n in (("q_proj", q_size), ("k_proj", kv_size), ("gate_proj", config.intermediate_size)):
        if (n // world) % 8:
            raise UnsupportedModelError(
                f"AWQ {name} has {n} outputs: {n // world} per rank at --tp {world} splits packed 8-column words"
            )
    for name, k in (("o_proj", q_size), ("down_proj", config.intermediate_size)):
        group = k if awq.group_size == -1 else awq.group_size
        if awq.group_size == -1 or (k // world) % group:
            raise UnsupportedModelError(
                f"AWQ {name} has {k} inputs in groups of {group}: --tp {world} would split a group"
            )


def rank_config(config: ModelConfig, world: int) -> ModelConfig:
    """The shapes one rank builds: heads, KV heads, MLP width and vocabulary divided by `world`."""
    check_shardable(config, world)
    return dataclasses.replace(
        config,
        n_heads=config.n_heads // world,
        n_kv_heads=config.n_kv_heads // world,
        intermediate_size=config.intermediate_size // world,
        vocab_size=config.vocab_size // world,
    )


def shard_tensor(name: str, tensor: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s part of checkpoint tensor `name` (HF naming); a view where one is possible."""
    kind = name.rsplit(".", 1)[-1]
    if name in _VOCAB:
        return tensor.chunk(world, dim=0)[rank]
    if _COLUMN.fullmatch(name):
        # weight/bias [N, ...]: rows are outputs; AWQ [.., N or N/8]: columns are
        dim = 0 if kind in ("weight", "bias") else 1
        return _part(tensor, dim, rank, world)
    if _ROW.fullmatch(name):
        if kind == "bias":
            return tensor if rank == 0 else torch.zeros_like(tensor)
        # weight [N, K]: columns are inputs; AWQ qweight [K, ..], qzeros/scales [K/G, ..]: rows are
        dim = 1 if kind == "weight" else 0
        return _part(tensor, dim, rank, world)
    return tensor


def _part(tensor: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    size = tensor.shape[dim] // world
    return tensor.narrow(dim, rank * size, size)
