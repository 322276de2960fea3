"""`tameshi synth`: random weights in real shapes and the real checkpoint formats, loadable as is."""

import json

import pytest
from safetensors import safe_open

from tameshi import LLM, SamplingParams
from tameshi.model.config import ModelConfig
from tameshi.quantize.synth import PRESETS, synth

TINY = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
    "max_position_embeddings": 256,
}  # fmt: skip


@pytest.mark.parametrize("quant", ["awq", "fp16"])
def test_synth_writes_a_sharded_checkpoint_that_loads(tmp_path, quant):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    out = synth(str(cfg), tmp_path / "out", quant=quant, group_size=64, shard_gib=0.0005)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    shard = (
        out
        / index["weight_map"]["model.layers.0.mlp.down_proj." + ("qweight" if quant == "awq" else "weight")]
    )
    with safe_open(str(shard), "pt") as f:
        if quant == "awq":  # AutoAWQ GEMM: [K, N/8] int32 for down_proj 512 -> 256
            t = f.get_tensor("model.layers.0.mlp.down_proj.qweight")
            assert t.shape == (512, 32) and str(t.dtype) == "torch.int32"
        else:
            assert f.get_tensor("model.layers.0.mlp.down_proj.weight").shape == (256, 512)
    llm = LLM(str(out), progress=False)
    assert (llm.loaded.config.awq is not None) == (quant == "awq")
    done = llm.ask("hello", SamplingParams(max_new_tokens=4, min_new_tokens=4, do_sample=False))
    assert done.completion_tokens == 4


def test_presets_are_the_real_shapes():
    big = ModelConfig.from_hf(PRESETS["deepseek-llm-67b"])
    assert (big.n_layers, big.hidden_size, big.n_heads, big.n_kv_heads, big.vocab_size) == (
        95,
        8192,
        64,
        8,
        102400,
    )
    assert big.intermediate_size == 22016 and big.head_dim == 128
    small = ModelConfig.from_hf(PRESETS["deepseek-llm-7b"])
    assert (small.n_layers, small.hidden_size, small.n_kv_heads, small.intermediate_size) == (
        30,
        4096,
        32,
        11008,
    )


@pytest.mark.parametrize("quant", ["awq", "bf16"])
def test_in_memory_synth_is_the_written_checkpoint(tmp_path, quant):
    """`synth:CONFIG` draws the tensors `tameshi synth` writes (same seed, same device) straight
    into the loader: the same logits as loading the written folder, without the disk."""
    import torch

    from tameshi.engine.runner import StepPlan, forward_step

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    written = LLM(str(synth(str(cfg), tmp_path / "out", quant=quant)), progress=False)
    in_memory = LLM(f"synth:{cfg}" + (":awq" if quant == "awq" else ""), progress=False)
    assert in_memory.loaded.source.kind == "synth"
    assert (in_memory.loaded.config.awq is not None) == (quant == "awq")
    ids = list(range(5, 21))
    plan = StepPlan(ids, list(range(len(ids))), [([0], 0, len(ids))], [len(ids) - 1])
    with torch.inference_mode():
        want = forward_step(written.engine.model, written.engine.cache, plan)
        got = forward_step(in_memory.engine.model, in_memory.engine.cache, plan)
    assert torch.equal(got, want)
    greedy = SamplingParams(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert in_memory.generate(ids, greedy).token_ids == written.generate(ids, greedy).token_ids


def test_in_memory_synth_names_its_presets():
    from tameshi.errors import TameshiError

    with pytest.raises(TameshiError, match="unknown preset 'nope': give one of deepseek-llm-7b"):
        LLM("synth:nope", progress=False)
