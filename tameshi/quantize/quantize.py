"""`tameshi quantize`: an fp16/bf16 (or GGUF) model -> an AutoAWQ GEMM checkpoint that AutoAWQ and tameshi load.

`rtn` is AutoAWQ's group quantizer applied as is (round to nearest), streamed tensor by tensor. `awq` first
searches activation-aware scales and clipping on the shipped EN/JA calibration text (awq_search.py), on CPU in
fp32, then quantizes the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from tameshi.errors import InvalidRequestError, UnsupportedModelError
from tameshi.loading.awq import merge_side_config
from tameshi.loading.hub import resolve
from tameshi.loading.safetensors import checkpoint_files, iter_tensors
from tameshi.model.config import ModelConfig
from tameshi.quantize.writer import awq_config_files, awq_quantize_rtn, gemm_tensors, write_shards
from tameshi.tokenizer import Tokenizer

# AutoAWQ quantizes exactly the linears inside the decoder blocks; embeddings, norms and lm_head stay fp16.
_QUANTIZED = re.compile(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight")


def quantize_model(
    model: str | None,
    out: Path,
    method: str = "awq",
    group_size: int = 128,
    shard_gib: float = 2.0,
    search_tokens: int = 512,
) -> Path:
    if method not in ("rtn", "awq"):
        raise InvalidRequestError(f"unknown method {method!r}; choose awq or rtn")
    source = resolve(model)
    if source.kind == "gguf":
        from tameshi.loading.gguf import open_gguf

        ck = open_gguf(source.path)
        config, tensors, generation = ck.config, ck.tensors(), ck.generation_config
        tokenizer = Tokenizer(ck.tokenizer, ck.tokenizer_config, generation)
    else:
        config = merge_side_config(source.path, json.loads((source.path / "config.json").read_text()))
        if config.get("quantization_config"):
            raise UnsupportedModelError(f"{source.path} is already quantized; give an fp16/bf16 model")
        tokenizer = Tokenizer.from_dir(source.path)
        gen_file = source.path / "generation_config.json"
        generation = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
        tensors = iter_tensors(checkpoint_files(source.path))
    c = ModelConfig.from_hf(config)
    inputs = {c.hidden_size, c.n_heads * c.head_dim, c.intermediate_size}
    if any(k % group_size for k in inputs):
        raise InvalidRequestError(
            f"group size {group_size} does not divide the input sizes {sorted(inputs)}; try 64 or 32"
        )
    if method == "awq":
        tensors = _awq_scaled(c, tensors, tokenizer, group_size, search_tokens)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    awq_config_files(out, config, group_size)
    write_shards(_quantized(tensors, group_size), out, shard_gib)
    tokenizer.save(out)
    (out / "generation_config.json").write_text(json.dumps(generation, indent=1))
    return out


def _quantized(tensors: Iterator[tuple[str, torch.Tensor]], group: int) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in tensors:
        if _QUANTIZED.fullmatch(name):
            yield from gemm_tensors(name.removesuffix(".weight"), *awq_quantize_rtn(tensor, group))
        else:
            yield name, tensor.half()


CALIBRATION = Path(__file__).resolve().parent / "data" / "calibration.txt"


def _awq_scaled(
    c: ModelConfig, tensors, tokenizer: Tokenizer, group: int, search_tokens: int
) -> Iterator[tuple[str, torch.Tensor]]:
    from tameshi.loading.build import build_model
    from tameshi.quantize.awq_search import apply_awq

    model = build_model(c, tensors, torch.device("cpu"), torch.float32)
    lines = [line for line in CALIBRATION.read_text(encoding="utf-8").splitlines() if line.strip()]
    calibration = [torch.tensor(tokenizer.encode(line)) for line in lines]
    apply_awq(model, calibration, group, search_tokens)
    return _export(model)


def _export(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's tensors under their HF names, fused q/k/v and gate/up split back apart."""
    c = model.config
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    yield "model.embed_tokens.weight", model.embed_tokens.weight
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", layer.input_layernorm.weight
        yield p + "post_attention_layernorm.weight", layer.post_attention_layernorm.weight
        qkv = layer.self_attn.qkv_proj.weight
        yield p + "self_attn.q_proj.weight", qkv[:q]
        yield p + "self_attn.k_proj.weight", qkv[q : q + kv]
        yield p + "self_attn.v_proj.weight", qkv[q + kv :]
        yield p + "self_attn.o_proj.weight", layer.self_attn.o_proj.weight
        gate_up = layer.mlp.gate_up_proj.weight
        yield p + "mlp.gate_proj.weight", gate_up[: c.intermediate_size]
        yield p + "mlp.up_proj.weight", gate_up[c.intermediate_size :]
        yield p + "mlp.down_proj.weight", layer.mlp.down_proj.weight
    yield "model.norm.weight", model.norm.weight
    if model.lm_head is not None:
        yield "lm_head.weight", model.lm_head.weight
