"""Check 1: logits of tiny random checkpoints written by transformers equal transformers' own (fp32)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tameshi.engine.kv_cache import ContiguousKVCache  # noqa: E402
from tameshi.loading.build import build_model  # noqa: E402
from tameshi.loading.safetensors import checkpoint_files, iter_tensors  # noqa: E402
from tameshi.model.config import ModelConfig  # noqa: E402

BASE = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=3,
    vocab_size=300,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)

CASES = {
    "llama-mha": (transformers.LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=4)),
    "llama-gqa-llama3-rope": (
        transformers.LlamaConfig,
        dict(
            num_attention_heads=8,
            num_key_value_heads=2,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
    ),
    "llama-linear-rope": (
        transformers.LlamaConfig,
        dict(
            num_attention_heads=4, num_key_value_heads=2, rope_scaling={"rope_type": "linear", "factor": 4.0}
        ),
    ),
    "llama-dynamic-rope": (
        transformers.LlamaConfig,
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=16,  # the test prompt runs past it, so the NTK base actually changes
            rope_scaling={"rope_type": "dynamic", "factor": 2.0},
        ),
    ),
    "qwen2-bias": (transformers.Qwen2Config, dict(num_attention_heads=4, num_key_value_heads=2)),
    "llama-tied": (
        transformers.LlamaConfig,
        dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True),
    ),
    "mistral": (
        transformers.MistralConfig,
        dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=None),
    ),
}


def _save_tiny(kind: str, tmp_path):
    cls, extra = CASES[kind]
    cfg = cls(**{**BASE, **extra})
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # random norms and biases, so a missed weight cannot hide behind ones/zeros
        for name, p in ref.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(tmp_path)
    return ref


def _our_logits(folder, ids: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    import json

    config = ModelConfig.from_hf(json.loads((folder / "config.json").read_text()))
    model = build_model(config, iter_tensors(checkpoint_files(folder)), torch.device("cpu"), torch.float32)
    cache = ContiguousKVCache(config, capacity=len(ids), device=torch.device("cpu"), dtype=torch.float32)
    out, start = [], 0
    with torch.inference_mode():
        for n in chunks:  # prefill in pieces, then single-token steps: exercises the cache paths
            cache.begin_step(n)
            positions = torch.arange(start, start + n)
            out.append(model.compute_logits(model(ids[start : start + n], positions, cache)))
            cache.end_step()
            start += n
    return torch.cat(out)


@pytest.mark.parametrize("kind", list(CASES))
def test_logits_match_transformers(kind, tmp_path):
    ref = _save_tiny(kind, tmp_path)
    ids = torch.randint(0, BASE["vocab_size"], (40,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(ids[None]).logits[0]
    # transformers recomputes dynamic frequencies from the whole input at once; the others run chunked
    chunks = [40] if kind == "llama-dynamic-rope" else [17, 9, 1, 1, 1, 11]
    got = _our_logits(tmp_path, ids, chunks)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
