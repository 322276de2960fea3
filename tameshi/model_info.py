"""What `tameshi info` shows: enough to spot a wrong template, a wrong EOS or a short context."""

from __future__ import annotations

from typing import Any

from tameshi.api import LLM


def describe(llm: LLM) -> dict[str, Any]:
    loaded, tok = llm.loaded, llm.tokenizer
    c = loaded.config
    n_params = _count_params(loaded.config)
    quant = c.quantization.get("quant_method", "?") if c.quantization else "none"
    if loaded.quantize:
        quant += f"; run-time {loaded.quantize} weight-only"
    template = loaded.chat_template
    eos = ", ".join(f"{tok.decode([i], skip_special_tokens=False)!r} ({i})" for i in tok.eos_token_ids)
    return {
        "model": str(loaded.source.path),
        "found as": loaded.source.origin,
        "architecture": f"{c.architecture} ({c.model_type})",
        "parameters": f"{n_params / 1e6:,.1f} M" if n_params < 1e9 else f"{n_params / 1e9:,.2f} B",
        "layers / hidden": f"{c.n_layers} / {c.hidden_size}",
        "heads (q / kv) × dim": f"{c.n_heads} / {c.n_kv_heads} × {c.head_dim}",
        "vocab": f"{c.vocab_size} rows (tokenizer: {tok.vocab_size})",
        "context length": f"{llm.engine.max_model_len} tokens",
        "KV cache": _kv(llm),
        "rope": f"theta {c.rope.theta:g}, {c.rope.type}"
        + (f" ×{c.rope.factor:g}" if c.rope.type != "default" else ""),
        "device / dtype": f"{loaded.device} / {str(loaded.dtype).removeprefix('torch.')}",
        "quantization": quant,
        "bos": f"{tok.bos_token!r} ({tok.bos_token_id}), added: {tok.add_bos_token}",
        "eos (stops generation)": eos or "none",
        "chat template": template.origin if template else "none (use --raw / generate())",
        "generation defaults": loaded.generation_config or "transformers' defaults",
    }


def _count_params(c) -> int:
    attn = (
        c.hidden_size * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim + c.n_heads * c.head_dim * c.hidden_size
    )
    mlp = 3 * c.hidden_size * c.intermediate_size
    head = 0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size
    return c.vocab_size * c.hidden_size + head + c.n_layers * (attn + mlp + 2 * c.hidden_size) + c.hidden_size


def _kv(llm: LLM) -> str:
    s = llm.engine.stats()
    return f"{s.kv_blocks_total} blocks × {s.block_size} = {s.kv_blocks_total * s.block_size:,} tokens"
