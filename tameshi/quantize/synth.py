"""Random weights in a real model's shapes and real checkpoint format, for benchmarks without downloads.

Written shard by shard (each shard's tensors, then the next), so host memory holds one shard, not the
model. The result is an ordinary HF folder (fp16) or AutoAWQ GEMM folder (awq) that any loader reads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tameshi.errors import InvalidRequestError
from tameshi.loading.awq import pack_gemm
from tameshi.loading.hub import SYNTH_SCHEME
from tameshi.model.config import ModelConfig
from tameshi.quantize.writer import awq_config_files, awq_hf_config, write_shards

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
    c: ModelConfig, quant: str, group: int, gen: torch.Generator, dtype: torch.dtype, host: bool = True
) -> Iterator[tuple[str, torch.Tensor]]:
    """Every checkpoint tensor of `c`, drawn on the generator's device; `host`: moved to the CPU (for
    writing), else left where drawn (for loading straight from memory). Floating weights in `dtype`."""
    h, kv = c.hidden_size, c.n_kv_heads * c.head_dim
    dev = gen.device
    out = (lambda t: t.cpu()) if host else (lambda t: t)

    def normal(n: int, k: int, std: float) -> torch.Tensor:
        return out((torch.randn(n, k, generator=gen, device=dev) * std).to(dtype))

    def ones(n: int) -> torch.Tensor:
        return out(torch.ones(n, dtype=dtype, device=dev))

    yield "model.embed_tokens.weight", normal(c.vocab_size, h, 0.02)
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", ones(h)
        yield p + "post_attention_layernorm.weight", ones(h)
        shapes = {
            "self_attn.q_proj": (c.n_heads * c.head_dim, h), "self_attn.k_proj": (kv, h),
            "self_attn.v_proj": (kv, h), "self_attn.o_proj": (h, c.n_heads * c.head_dim),
            "mlp.gate_proj": (c.intermediate_size, h), "mlp.up_proj": (c.intermediate_size, h),
            "mlp.down_proj": (h, c.intermediate_size),
        }  # fmt: skip
        for name, (n, k) in shapes.items():
            if quant != "awq":
                yield f"{p}{name}.weight", normal(n, k, 1 / k**0.5)
                continue
            # random 4-bit codes and zero points; scales sized so outputs keep unit variance
            # uniform random words are eight uniform random nibbles: no int64 codes to pack (8x the
            # memory traffic, minutes at 67B)
            words = torch.randint(-(2**31), 2**31, (k, n // 8), dtype=torch.int64, generator=gen, device=dev)
            yield f"{p}{name}.qweight", out(words.to(torch.int32))
            zeros = torch.randint(7, 9, (k // group, n), generator=gen, device=dev)
            yield f"{p}{name}.qzeros", out(pack_gemm(zeros))
            scale = torch.full((k // group, n), 0.2 / k**0.5, dtype=torch.float16, device=dev)
            yield f"{p}{name}.scales", out(scale)
    yield "model.norm.weight", ones(h)
    yield "lm_head.weight", normal(c.vocab_size, h, 1 / h**0.5)


_FLOAT = {"fp16": torch.float16, "bf16": torch.bfloat16}
QUANTS = ("awq", *_FLOAT)


def synth(
    preset: str,
    out: Path,
    quant: str = "awq",
    group_size: int = 128,
    shard_gib: float = 2.0,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Write the checkpoint: AutoAWQ GEMM (`awq`, fp16 around it) or plain `fp16` / `bf16` weights."""
    if quant not in QUANTS:
        raise InvalidRequestError(f"--quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    dtype = _FLOAT.get(quant, torch.float16)
    config = load_preset(preset) | {"torch_dtype": str(dtype).removeprefix("torch.")}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if quant == "awq":
        config = awq_config_files(out, config, group_size)
    else:
        (out / "config.json").write_text(json.dumps(config, indent=1))
    c = ModelConfig.from_hf(config)  # validates the shapes, and an AWQ config, before writing weights
    # On a GPU the random numbers come ~50x faster (minutes -> seconds for the 67B); same format.
    gen = torch.Generator(device).manual_seed(seed)
    write_shards(_tensors(c, quant, group_size, gen, dtype), out, shard_gib)
    for f in _TOKENIZER.iterdir():
        shutil.copy(f, out / f.name)
    return out


# -- never written: `synth:PRESET[:awq]` as a model name ------------------------------------------


@dataclass
class InMemorySynth:
    """A model named `synth:PRESET` (bf16 weights, fp16 where the preset says so) or `synth:PRESET:awq` (AWQ
    g128): the same random tensors as `tameshi synth` writes, drawn on the device they load to and
    handed to the loader directly. For shapes whose checkpoint does not fit the disk (DeepSeek-LLM-67B
    in bf16 is 134 GB); the loader, sharding and engine are the ones a written checkpoint goes
    through, only the file reads are skipped."""

    preset: str
    quant: str  # "fp" | "awq"
    group_size: int = 128

    @classmethod
    def parse(cls, name: str) -> InMemorySynth:
        spec = name.removeprefix(SYNTH_SCHEME)
        preset, _, quant = spec.rpartition(":")
        if quant not in ("fp", "awq"):
            preset, quant = spec, "fp"
        load_preset(preset)  # an unknown preset fails here, with the presets named
        return cls(preset, quant)

    def config(self) -> dict:
        config = load_preset(self.preset)
        if self.quant == "awq":
            return awq_hf_config(config, self.group_size)
        return config | {"torch_dtype": "float16" if config.get("torch_dtype") == "float16" else "bfloat16"}

    def tensors(
        self, config: ModelConfig, device: torch.device, seed: int = 0
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """In the checkpoint's dtype, as `tameshi synth` would write them (the loader casts them like
        a file's): with the same seed on the same device, the very tensors of the written checkpoint."""
        gen = torch.Generator(device).manual_seed(seed)
        dtype = torch.float16 if config.torch_dtype == "float16" else torch.bfloat16
        return _tensors(config, self.quant, self.group_size, gen, dtype, host=False)

    @staticmethod
    def tokenizer_dir() -> Path:
        return _TOKENIZER
