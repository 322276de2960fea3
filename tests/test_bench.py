"""`tameshi bench` end to end on CPU: a synthetic checkpoint written in a child process, every number
present and plausible, the batch's greedy outputs equal to their solo runs."""

import json
import re

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
    # the concurrent run's steps: every prompt token computed in a prefill step, the other 7 tokens
    # of each of the 3 requests in decode steps (the first comes out of its prefill)
    steps = r["concurrent_steps"]
    assert steps["prefill_tokens"] == 3 * 16 and steps["decode_rows"] == 3 * 7
    assert steps["prefill_s"] > 0 and steps["decode_s"] > 0
    printed = capsys.readouterr().out
    assert "of which decode steps" in printed
    want_tps = f"{steps['decode_rows'] / steps['decode_s']:,.0f} tokens/s"
    assert want_tps in printed  # the decode steps' own rate, beside their time


def test_bench_batch_invariant_reports_its_mode_and_solo_equality(tmp_path, capsys):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "bench.json"
    args = ["bench", "--synth", str(cfg), "--synth-dir", str(tmp_path / "ckpt"), "--prompt-len", "16",
            "--gen-len", "8", "--ttft-prompt-len", "32", "--concurrency", "3", "--solo-checks", "3",
            "--batch-invariant", "--json", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert r["batch_invariant"] and r["solo_checked"] == 3 and r["solo_equal"] == 3
    assert re.search(r"batch-invariant mode\s*│\s*on", capsys.readouterr().out)
    bad = [
        "bench",
        "--synth",
        str(cfg),
        "--synth-dir",
        str(tmp_path / "ckpt"),
        "--gpu-memory-utilization",
        "1.5",
    ]
    assert main(bad) != 0
    assert "--gpu-memory-utilization must lie in (0, 1]" in capsys.readouterr().err


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


def test_where_batch_and_solo_part_the_solo_margin_is_reported(tmp_path, monkeypatch):
    """A batch output that differs from its solo run (here: made to, one token changed) is reported
    with the solo run's top-2 margin where they part and whether the batch took its second choice,
    so that a near tie of random weights reads differently from a batching bug."""
    from tameshi import LLM
    from tameshi.bench import run_bench
    from tameshi.engine.engine import Engine

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    llm = LLM(f"synth:{cfg}", device="cpu", progress=False)
    real = Engine.generate_batch
    changed: list[int] = []

    def first_token_changed(self, requests):
        for i, out in real(self, requests):
            if i == 0 and out.token_ids and not changed and len(requests) == 2:
                changed.append((out.token_ids[0] + 1) % TINY["vocab_size"])
                out.token_ids = [changed[0], *out.token_ids[1:]]
            yield i, out

    monkeypatch.setattr(Engine, "generate_batch", first_token_changed)
    r = run_bench(llm, "tiny", prompt_len=8, gen_len=4, ttft_prompt_len=8, concurrency=2, solo_checks=2)
    assert changed and r.solo_common_prefix == [0, 4] and r.solo_equal == 1
    assert len(r.solo_part_margin) == 1 and r.solo_part_margin[0] >= 0 and len(r.solo_part_second) == 1
    took = "its 2nd choice" if r.solo_part_second[0] else "another token"
    assert f"batch took {took}" in dict(r.rows())["where they part: solo's top-2 margin"]
