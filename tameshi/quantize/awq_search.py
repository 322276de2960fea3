"""Activation-aware weight quantization (AWQ): per-channel scales and clipping found on calibration text.

Per decoder layer, in order: record each linear group's inputs; search a scale s per input channel
(s = x_mean^a / w_mean^(1-a), a on a grid of 20) minimising the group's output error after 4-bit
quantization, and fold it into the previous op (norm weight, or v/up rows) and the linears' columns;
then search a clipping range per output channel and group; then feed the layer's output (scaled,
clipped, not yet quantized) to the next layer. Facts from llm-awq / AutoAWQ (formats.md §3).
"""

from __future__ import annotations

import torch

from tameshi.engine.kv_cache import ContiguousKVCache
from tameshi.model.llama import DecoderLayer, LlamaForCausalLM
from tameshi.quantize.writer import awq_quantize_rtn

N_GRID = 20
MAX_SHRINK = 0.5  # clipping tries max * (1 - i/20) for i < 10


def pseudo_quantize(w: torch.Tensor, group: int) -> torch.Tensor:
    q, z, s = awq_quantize_rtn(w, group)
    n, k = w.shape
    return ((q.reshape(n, k // group, group) - z[..., None]) * s.float()[..., None]).reshape(n, k)


def _sample(x: torch.Tensor, tokens: int) -> torch.Tensor:
    return x[:: max(1, len(x) // tokens)]


def search_scale(x: torch.Tensor, w: torch.Tensor, group: int, tokens: int = 512) -> torch.Tensor:
    """x [T, K] inputs, w [N, K] the group's weights stacked; returns s [K] (ones if nothing beats RTN)."""
    x_mean = x.abs().mean(0)  # the statistic uses every token; the loss a sample of them
    x = _sample(x, tokens)
    wa = w.abs().reshape(-1, group)
    w_mean = (wa / wa.amax(1, keepdim=True).clamp(min=1e-8)).reshape(w.shape).mean(0)
    ref = x @ w.t()
    best_loss, best = float("inf"), torch.ones_like(x_mean)
    for i in range(N_GRID):
        a = i / N_GRID
        s = (x_mean.pow(a) / (w_mean.pow(1 - a) + 1e-4)).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = ((x @ (pseudo_quantize(w * s, group) / s).t()) - ref).pow(2).mean().item()
        if loss < best_loss:
            best_loss, best = loss, s
    return best


def search_clip(x: torch.Tensor, w: torch.Tensor, group: int, tokens: int = 512) -> torch.Tensor:
    """Clip each output row's groups to the range whose quantized output error is smallest."""
    x = _sample(x, tokens)
    n, k = w.shape
    xg = x.reshape(len(x), k // group, group)
    wg = w.reshape(n, k // group, group)
    ref = torch.einsum("tgk,ngk->tng", xg, wg)
    org_max = wg.abs().amax(-1, keepdim=True)
    best_max, best_err = org_max.clone(), torch.full(org_max.shape[:2], float("inf"))
    for i in range(int(MAX_SHRINK * N_GRID)):
        max_val = org_max * (1 - i / N_GRID)
        q = pseudo_quantize(torch.maximum(torch.minimum(wg, max_val), -max_val).reshape(n, k), group)
        err = (torch.einsum("tgk,ngk->tng", xg, q.reshape(n, k // group, group)) - ref).pow(2).mean(0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better[..., None], max_val, best_max)
    return torch.maximum(torch.minimum(wg, best_max), -best_max).reshape(n, k)


def _run_layer(
    model: LlamaForCausalLM, layer: DecoderLayer, hidden: list[torch.Tensor]
) -> list[torch.Tensor]:
    out = []
    for h in hidden:
        cache = ContiguousKVCache(model.config, len(h), h.device, h.dtype)
        cache.begin_step(len(h))
        cos, sin = model.rotary(torch.arange(len(h)), h.dtype)
        out.append(layer(h, cos, sin, cache))
    return out


def _inputs(model, layer, hidden) -> dict[str, torch.Tensor]:
    """The inputs each linear of `layer` sees, over all calibration tokens."""
    seen: dict[str, list[torch.Tensor]] = {}
    mods = {
        "qkv": layer.self_attn.qkv_proj, "o": layer.self_attn.o_proj,
        "gate_up": layer.mlp.gate_up_proj, "down": layer.mlp.down_proj,
    }  # fmt: skip
    hooks = [
        m.register_forward_pre_hook(lambda _m, a, n=n: seen.setdefault(n, []).append(a[0]))
        for n, m in mods.items()
    ]
    try:
        _run_layer(model, layer, hidden)
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


@torch.inference_mode()
def apply_awq(
    model: LlamaForCausalLM, calibration: list[torch.Tensor], group: int, tokens: int = 512
) -> None:
    """Scale and clip `model`'s decoder linears in place (fp32, CPU); quantize afterwards with RTN.

    `tokens`: how many calibration tokens each loss is measured on (AutoAWQ: 512 for clipping).
    """
    c = model.config
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    hidden = [model.embed_tokens(ids) for ids in calibration]
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        x = _inputs(model, layer, hidden)
        s = search_scale(x["qkv"], attn.qkv_proj.weight, group, tokens)
        layer.input_layernorm.weight.div_(s)
        attn.qkv_proj.weight.mul_(s)
        if q == kv:  # v -> o only when their shapes match (MHA), as AutoAWQ does
            s = search_scale(x["o"], attn.o_proj.weight, group, tokens)
            attn.qkv_proj.weight[q + kv :].div_(s[:, None])
            attn.o_proj.weight.mul_(s)
        s = search_scale(x["gate_up"], mlp.gate_up_proj.weight, group, tokens)
        layer.post_attention_layernorm.weight.div_(s)
        mlp.gate_up_proj.weight.mul_(s)
        x = _inputs(model, layer, hidden)
        s = search_scale(x["down"], mlp.down_proj.weight, group, tokens)
        mlp.gate_up_proj.weight[c.intermediate_size :].div_(s[:, None])
        mlp.down_proj.weight.mul_(s)
        x = _inputs(model, layer, hidden)  # clipping sees the inputs as scaled
        # q/k are not clipped: attention's q.k product makes their error hard to judge (llm-awq)
        kv_rows = attn.qkv_proj.weight[q:]
        kv_rows.copy_(search_clip(x["qkv"], kv_rows.clone(), group, tokens))
        attn.o_proj.weight.copy_(search_clip(x["o"], attn.o_proj.weight.clone(), group, tokens))
        mlp.gate_up_proj.weight.copy_(
            search_clip(x["gate_up"], mlp.gate_up_proj.weight.clone(), group, tokens)
        )
        mlp.down_proj.weight.copy_(search_clip(x["down"], mlp.down_proj.weight.clone(), group, tokens))
        hidden = _run_layer(model, layer, hidden)
