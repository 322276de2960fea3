"""`tameshi quantize`: an fp16/bf16 (or GGUF) model -> an AutoAWQ GEMM checkpoint that AutoAWQ and tameshi load.

`rtn` is AutoAWQ's own group quantizer applied as is (round to nearest). `awq` (activation-aware scale and
clip search over calibration text) is not built yet and says so rather than writing RTN under its name.
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
    model: str | None, out: Path, method: str = "rtn", group_size: int = 128, shard_gib: float = 2.0
) -> Path:
    if method == "awq":
        raise InvalidRequestError("--method awq (scale and clip search) is not built yet; --method rtn works")
    if method != "rtn":
        raise InvalidRequestError(f"unknown method {method!r}; choose rtn")
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
