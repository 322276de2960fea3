"""`tameshi bench` end to end on CPU: a synthetic checkpoint written in a child process, every number
present and plausible, the batch's greedy outputs equal to their solo runs."""

import json

import torch

from tameshi.bench import weight_bytes_per_token
from tameshi.cli import main

TINY = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
    "max_position_embeddings": 256,
}  # fmt: skip


def test_bench_on_a_synthetic_awq_model(tmp_path, capsys):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "bench.json"
    args = ["bench", "--synth", str(cfg), "--synth-dir", str(tmp_path / "ckpt"), "--prompt-len", "16",
            "--gen-len", "8", "--ttft-prompt-len", "32", "--concurrency", "3", "--json", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert (tmp_path / "ckpt" / "config.json").exists()
    assert r["solo_checked"] == 2 and r["solo_equal"] == 2
    assert r["ttft_s"] > 0 and r["decode_tps"] > 0 and r["aggregate_tps"] > 0 and r["copy_gbps"] > 0
    # On CPU (also on a GPU machine): AWQ g128 (synth's default) for the linears; norms, head and AWQ scales in fp32;
    # the embedding lookup excluded
    h, i, v, layers, group, d = 256, 512, 512, 2, 128, 4
    linear = h * (h + 2 * 128) + h * h + h * 2 * i + i * h  # qkv (2 kv heads of 64), o, gate_up, down
    awq_bytes = linear / 2 + (0.5 + d) * linear / group  # 4-bit codes; per group a 4-bit zero, a scale
    want = layers * (awq_bytes + 2 * h * d) + h * d + v * h * d
    assert abs(r["weight_gb"] * 1e9 - want) / want < 0.02
    assert "tokens/s" in capsys.readouterr().out


def test_weight_bytes_count_a_tied_head_once():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(100, 8)
            self.norm = torch.nn.LayerNorm(8)
            self.lm_head = None

    class Untied(Tied):
        def __init__(self):
            super().__init__()
            self.lm_head = torch.nn.Linear(8, 100, bias=False)

    assert weight_bytes_per_token(Tied()) == (800 + 16) * 4  # the head reads the whole table
    assert weight_bytes_per_token(Untied()) == (16 + 800) * 4  # the lookup reads one row: not counted
