"""The Llama-family decoder (DeepSeek-LLM, Llama 2/3, Mistral, Qwen2, SmolLM2) in plain PyTorch."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from tameshi.errors import CorruptCheckpointError, UnsupportedModelError
from tameshi.model.config import ModelConfig
from tameshi.model.layers import MLP, Attention, AttentionBackend, RMSNorm, RotaryEmbedding
from tameshi.model.linear import AWQLinear, Linear, in_fixed_rows, matmul_to, quantize_weight
from tameshi.parallel.shard import rank_config, shard_tensor

if TYPE_CHECKING:
    from tameshi.parallel.group import TensorParallel


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer, tp)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, layer, tp)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: AttentionBackend
    ) -> torch.Tensor:
        x, delta = self.step(x, None, cos, sin, backend)
        return x + delta

    def step(
        self,
        x: torch.Tensor,
        delta: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        backend: AttentionBackend,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream entering is x + delta; returns (x', delta') for the next layer, so
        that each residual add is fused with the norm that follows it."""
        block = self.self_attn.qkv_proj.x16_block(x)
        x, h, h_q = self.input_layernorm.add_norm_x16(x, delta, block)
        x, h = self.post_attention_layernorm.add_norm(x, self.self_attn(h, cos, sin, backend, h_q))
        return x, self.mlp(h)


# HF checkpoint name -> (module path in this model, fused shard or None, weight|bias)
_LAYER_NAME = re.compile(
    r"model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj|"
    r"input_layernorm|post_attention_layernorm)\.(weight|bias|qweight|qzeros|scales)"
)
_FUSED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", "q_proj"),
    "self_attn.k_proj": ("self_attn.qkv_proj", "k_proj"),
    "self_attn.v_proj": ("self_attn.qkv_proj", "v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj", None),
    "mlp.gate_proj": ("mlp.gate_up_proj", "gate_proj"),
    "mlp.up_proj": ("mlp.gate_up_proj", "up_proj"),
    "mlp.down_proj": ("mlp.down_proj", None),
}
# Tensors some checkpoints carry that hold nothing the model needs.
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


class LlamaForCausalLM(nn.Module):
    """`tp`: this process is one rank of a tensor-parallel model (tameshi.parallel); it builds and
    loads only its shard: `rank_config` holds its shapes (heads, KV heads, MLP width, vocabulary
    divided by the world size), `config` the whole model's."""

    def __init__(self, config: ModelConfig, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.config = config
        self.tp = tp
        self.rank_config = config if tp is None else rank_config(config, tp.world)
        rc = self.rank_config
        self.embed_tokens = nn.Embedding(rc.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(config)
        self.layers = nn.ModuleList(DecoderLayer(rc, i, tp) for i in range(config.n_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = None if config.tie_word_embeddings else Linear(config.hidden_size, [rc.vocab_size])
        self.batch_invariant = False
        for p in self.parameters():
            p.requires_grad_(False)

    def set_batch_invariant(self, on: bool) -> None:
        """Compute every token's row the same way whatever it is batched with (the matmuls' kernels
        and sums no longer depend on the row count): greedy outputs then equal their solo runs bit
        for bit, at some cost in speed (EngineConfig.batch_invariant). The other per-token kernels
        (norms, RoPE, activations, decode attention) already are; prefill attention is the engine's."""
        self.batch_invariant = on
        for module in self.modules():
            if isinstance(module, (Linear, AWQLinear)):
                module.batch_invariant = on

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, backend: AttentionBackend
    ) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden] (normed)."""
        x = self.embed_tokens(input_ids) if self.tp is None else self._embed_vocab_parallel(input_ids)
        cos, sin = self.rotary(positions, x.dtype)
        delta = None
        for layer in self.layers:
            x, delta = layer.step(x, delta, cos, sin, backend)
        return self.norm.add_norm(x, delta)[1]

    def quantize(self, method: str) -> None:
        """Opt-in CPU speed mode: every projection and the head weight-only "int8" or "int4"."""
        if self.tp is not None:
            raise UnsupportedModelError("run-time --quantize does not combine with --tp")
        for module in self.modules():
            if isinstance(module, Linear):
                module.quantize(method)
        if self.lm_head is None:  # tied: the embedding table stays exact for lookups, the head gets a copy
            with torch.device("meta"):
                self.lm_head = Linear(self.config.hidden_size, [self.config.vocab_size])
            self.lm_head.weight = None
            self.lm_head.packed = quantize_weight(self.embed_tokens.weight.data, method)

    def _embed_vocab_parallel(self, input_ids: torch.Tensor) -> torch.Tensor:
        """This rank holds rows [rank * n, (rank + 1) * n) of the table: it looks up its own ids,
        zeros the others' rows, and the all-reduce fills them in."""
        n = self.embed_tokens.weight.shape[0]
        local = input_ids - self.tp.rank * n
        outside = (local < 0) | (local >= n)
        x = self.embed_tokens(local.masked_fill(outside, 0)).masked_fill(outside[:, None], 0.0)
        return self.tp.all_reduce(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        tied = self.lm_head is None
        head = self.embed_tokens.weight if tied else self.lm_head.weight
        if hidden.is_cuda and head is not None and hidden.dtype != torch.float32:
            # Float32 logits straight from cuBLAS's accumulator. Rounded to half precision, the top
            # two of a flat distribution sit one unit in the last place apart (2^-8 near 5) or tie,
            # and a different summation order elsewhere (a batch's kernels, tensor parallel) flips them.
            w_t = head.t()
            if self.batch_invariant:
                logits = in_fixed_rows(lambda rows: matmul_to(rows, w_t, torch.float32), hidden)
            else:
                logits = matmul_to(hidden, w_t, torch.float32)
        elif tied and self.batch_invariant:
            logits = in_fixed_rows(lambda rows: F.linear(rows, self.embed_tokens.weight), hidden)
        else:
            logits = F.linear(hidden, self.embed_tokens.weight) if tied else self.lm_head(hidden)
        # tensor parallel: each rank scored its slice of the vocabulary
        return logits if self.tp is None else self.tp.all_gather_last(logits)

    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors (HF names) into the already materialised parameters."""
        loaded: set[str] = set()
        for name, tensor in tensors:
            if _IGNORED.match(name):
                continue
            if name == "lm_head.weight" and self.lm_head is None:
                continue  # tied: the embedding is the head
            if self.tp is not None:  # only this rank's slice is copied (and, from a mmap, read)
                tensor = shard_tensor(name, tensor, self.tp.rank, self.tp.world)
            self._load_one(name, tensor)
            loaded.add(name)
        missing = [n for n in self.expected_tensors() if n not in loaded]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise CorruptCheckpointError(f"checkpoint lacks tensor {missing[0]}{more}")

    def _load_one(self, name: str, tensor: torch.Tensor) -> None:
        if name in ("model.embed_tokens.weight", "model.norm.weight"):
            target = self.embed_tokens.weight if name.startswith("model.embed") else self.norm.weight
            _copy(target, tensor, name)
            return
        if name == "lm_head.weight":
            self.lm_head.load(None, "weight", tensor, name)
            return
        m = _LAYER_NAME.fullmatch(name)
        if m is None or int(m.group(1)) >= len(self.layers):
            raise CorruptCheckpointError(f"checkpoint has unexpected tensor {name}")
        layer, part, kind = self.layers[int(m.group(1))], m.group(2), m.group(3)
        if part in _FUSED:
            path, shard = _FUSED[part]
            layer.get_submodule(path).load(shard, kind, tensor, name)
        elif kind == "weight":
            _copy(layer.get_submodule(part).weight, tensor, name)
        else:
            raise CorruptCheckpointError(f"checkpoint has unexpected tensor {name}")

    def expected_tensors(self) -> list[str]:
        names = ["model.embed_tokens.weight", "model.norm.weight"]
        if self.lm_head is not None:
            names.append("lm_head.weight")
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
            for part, (path, _) in _FUSED.items():
                names += [f"{p}{part}.{kind}" for kind in layer.get_submodule(path).tensor_kinds]
        return names


def _copy(param: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
    if param.shape != tensor.shape:
        raise CorruptCheckpointError(
            f"tensor {name} has shape {list(tensor.shape)}, but the config implies {list(param.shape)}"
        )
    param.data.copy_(tensor)
