"""Random weights in a real model's shapes and real checkpoint format, for benchmarks without downloads.

Written shard by shard (each shard's tensors, then the next), so host memory holds one shard, not the
model. The result is an ordinary HF folder (fp16) or AutoAWQ GEMM folder (awq) that any loader reads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from tameshi.errors import InvalidRequestError
from tameshi.loading.awq import pack_gemm
from tameshi.model.config import ModelConfig
from tameshi.quantize.writer import awq_config_files, write_shards

# The real configs (shared/reference/formats.md §1.1).
_DEEPSEEK = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "vocab_size": 102400, "max_position_embeddings": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False, "bos_token_id": 100000, "eos_token_id": 100001, "torch_dtype": "bfloat16",
}  # fmt: skip
PRESETS = {
    "deepseek-llm-7b": _DEEPSEEK | {
        "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 30,
        "num_attention_heads": 32, "num_key_value_heads": 32,
    },
    "deepseek-llm-67b": _DEEPSEEK | {
        "hidden_size": 8192, "intermediate_size": 22016, "num_hidden_layers": 95,
        "num_attention_heads": 64, "num_key_value_heads": 8,
    },
}  # fmt: skip
# A small byte-level BPE with DeepSeek-LLM's special tokens and chat template: random weights need no
# real vocabulary, only a tokenizer the loader accepts.
_TOKENIZER = Path(__file__).resolve().parent / "synth_tokenizer"


def load_preset(preset: str) -> dict:
    if preset in PRESETS:
        return dict(PRESETS[preset])
    path = Path(preset)
    if not path.is_file():
        raise InvalidRequestError(
            f"unknown preset {preset!r}: give one of {', '.join(PRESETS)} or a config.json"
        )
    return json.loads(path.read_text())


def _tensors(
    c: ModelConfig, quant: str, group: int, gen: torch.Generator
) -> Iterator[tuple[str, torch.Tensor]]:
    h, kv = c.hidden_size, c.n_kv_heads * c.head_dim
    yield (
        "model.embed_tokens.weight",
        (torch.randn(c.vocab_size, h, generator=gen, device=gen.device) * 0.02).half().cpu(),
    )
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", torch.ones(h, dtype=torch.float16)
        yield p + "post_attention_layernorm.weight", torch.ones(h, dtype=torch.float16)
        shapes = {
            "self_attn.q_proj": (c.n_heads * c.head_dim, h), "self_attn.k_proj": (kv, h),
            "self_attn.v_proj": (kv, h), "self_attn.o_proj": (h, c.n_heads * c.head_dim),
            "mlp.gate_proj": (c.intermediate_size, h), "mlp.up_proj": (c.intermediate_size, h),
            "mlp.down_proj": (h, c.intermediate_size),
        }  # fmt: skip
        for name, (n, k) in shapes.items():
            if quant == "fp16":
                yield (
                    f"{p}{name}.weight",
                    (torch.randn(n, k, generator=gen, device=gen.device) / k**0.5).half().cpu(),
                )
                continue
            # random 4-bit codes and zero points; scales sized so outputs keep unit variance
            # uniform random words are eight uniform random nibbles: no int64 codes to pack (8x the
            # memory traffic, minutes at 67B)
            words = torch.randint(
                -(2**31), 2**31, (k, n // 8), dtype=torch.int64, generator=gen, device=gen.device
            )
            yield f"{p}{name}.qweight", words.to(torch.int32).cpu()
            yield (
                f"{p}{name}.qzeros",
                pack_gemm(torch.randint(7, 9, (k // group, n), generator=gen, device=gen.device).cpu()),
            )
            yield f"{p}{name}.scales", torch.full((k // group, n), 0.2 / k**0.5, dtype=torch.float16)
    yield "model.norm.weight", torch.ones(h, dtype=torch.float16)
    yield (
        "lm_head.weight",
        (torch.randn(c.vocab_size, h, generator=gen, device=gen.device) / h**0.5).half().cpu(),
    )


def synth(
    preset: str,
    out: Path,
    quant: str = "awq",
    group_size: int = 128,
    shard_gib: float = 2.0,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    if quant not in ("awq", "fp16"):
        raise InvalidRequestError(f"--quant must be awq or fp16, not {quant!r}")
    config = load_preset(preset) | {"torch_dtype": "float16"}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if quant == "awq":
        config = awq_config_files(out, config, group_size)
    else:
        (out / "config.json").write_text(json.dumps(config, indent=1))
    c = ModelConfig.from_hf(config)  # validates the shapes, and an AWQ config, before writing weights
    # On a GPU the random numbers come ~50x faster (minutes -> seconds for the 67B); same format.
    gen = torch.Generator(device).manual_seed(seed)
    write_shards(_tensors(c, quant, group_size, gen), out, shard_gib)
    for f in _TOKENIZER.iterdir():
        shutil.copy(f, out / f.name)
    return out
