"""Writing HF / AutoAWQ checkpoints: tensors streamed into size-capped safetensors shards plus an index."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from tameshi.loading.awq import pack_gemm


def write_shards(tensors: Iterable[tuple[str, torch.Tensor]], out: Path, shard_gib: float) -> None:
    """Host memory holds one shard at a time; shards are named -of-N once N is known."""
    shard: dict[str, torch.Tensor] = {}
    written: list[list[str]] = []
    size, limit = 0, shard_gib * 2**30

    def flush() -> None:
        nonlocal shard, size
        save_file(shard, out / f"part-{len(written):05d}.safetensors", metadata={"format": "pt"})
        written.append(list(shard))
        shard, size = {}, 0

    for name, tensor in tensors:
        shard[name] = tensor.contiguous()
        size += tensor.numel() * tensor.element_size()
        if size >= limit:
            flush()
    if shard or not written:
        flush()
    weight_map = {}
    for i, names in enumerate(written):
        final = f"model-{i + 1:05d}-of-{len(written):05d}.safetensors"
        (out / f"part-{i:05d}.safetensors").rename(out / final)
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def awq_quantize_rtn(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AutoAWQ's asymmetric 4-bit quantizer on W [N, K] -> (q [N, K], z [N, K/G], s fp16 [N, K/G]).

    s = (max - min) / 15 per group, z = clamp(-round(min / s), 0, 15), q = clamp(round(w / s) + z, 0, 15);
    the scale is rounded to fp16 first, since that is what the checkpoint stores.
    """
    n, k = weight.shape
    g = weight.float().reshape(n, k // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    s = ((hi - lo).clamp(min=1e-5) / 15).half().float()
    z = torch.clamp(-torch.round(lo / s), 0, 15)
    q = torch.clamp(torch.round(g / s[..., None]) + z[..., None], 0, 15)
    return q.reshape(n, k).to(torch.int32), z.to(torch.int32), s.half()


def gemm_tensors(
    prefix: str, q: torch.Tensor, z: torch.Tensor, s: torch.Tensor
) -> list[tuple[str, torch.Tensor]]:
    """The three AutoAWQ GEMM tensors of one linear from its [N, K] codes."""
    return [
        (prefix + ".qweight", pack_gemm(q.t().contiguous())),
        (prefix + ".qzeros", pack_gemm(z.t().contiguous())),
        (prefix + ".scales", s.t().contiguous()),
    ]


def awq_hf_config(config: dict, group_size: int) -> dict:
    """An HF config.json as AutoAWQ writes it: quantization_config (GEMM, 4-bit, zero point), fp16."""
    return dict(config) | {
        "torch_dtype": "float16",
        "quantization_config": {
            "quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm",
        },
    }  # fmt: skip


def awq_config_files(out: Path, config: dict, group_size: int) -> dict:
    """config.json gains quantization_config; quant_config.json is written beside it (AutoAWQ's own file)."""
    config = awq_hf_config(config, group_size)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    quant = {"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM"}
    (out / "quant_config.json").write_text(json.dumps(quant))
    return config
