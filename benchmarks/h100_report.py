"""The side-by-side table of benchmarks/run_h100.sh: tameshi bench and the notebook stack, one run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def step_rows(steps: dict | None) -> list[str]:
    """Where the concurrent run's time went (tameshi bench's Engine.step_times)."""
    if not steps:
        return []
    rows = []
    if steps["prefill_steps"]:
        rows.append(
            f"| … steps with prompt tokens: {steps['prefill_steps']} in {steps['prefill_s']:.2f} s "
            f"(prompt tokens/s) | {steps['prefill_tokens'] / steps['prefill_s']:,.0f} | – | – |"
        )
    if steps["decode_steps"]:
        rows.append(
            f"| … decode steps: {steps['decode_steps']} in {steps['decode_s']:.2f} s, mean batch "
            f"{steps['decode_rows'] / steps['decode_steps']:.1f} (ms per step) "
            f"| {1000 * steps['decode_s'] / steps['decode_steps']:.1f} | – | – |"
        )
        rows.append(
            f"| … tokens/s over the decode steps alone | {steps['decode_rows'] / steps['decode_s']:,.0f} | – | – |"
        )
    return rows


def invariant_rows(inv: dict, ours: dict) -> list[str]:
    """The same bench with EngineConfig.batch_invariant on, beside the default run."""

    def steps_tps(run: dict) -> str:
        steps = run.get("concurrent_steps") or {}
        return f"{steps['decode_rows'] / steps['decode_s']:,.0f}" if steps.get("decode_steps") else "–"

    return [
        "",
        "## Batch-invariant mode (`tameshi bench --batch-invariant`), same checkpoint and machine",
        "",
        "| measure | invariant | default | invariant / default |",
        "|---|---:|---:|---:|",
        f"| batch-1 decode (tokens/s) | {inv['decode_tps']:.1f} | {ours['decode_tps']:.1f} "
        f"| {inv['decode_tps'] / ours['decode_tps']:.2f} |",
        f"| TTFT, {inv['ttft_prompt_len']}-token prompt (s) | {inv['ttft_s']:.3f} | {ours['ttft_s']:.3f} "
        f"| {inv['ttft_s'] / ours['ttft_s']:.2f} |",
        f"| aggregate, {inv['concurrency']} concurrent, prefills included (tokens/s) "
        f"| {inv['aggregate_tps']:.0f} | {ours['aggregate_tps']:.0f} | {inv['aggregate_tps'] / ours['aggregate_tps']:.2f} |",
        f"| … over the decode steps alone (tokens/s) | {steps_tps(inv)} | {steps_tps(ours)} | |",
        f"| greedy batch outputs equal to solo runs (equal prefix, tokens) | {inv['solo_equal']}/"
        f"{inv['solo_checked']} ({', '.join(map(str, inv['solo_common_prefix']))}) "
        f"| {ours['solo_equal']}/{ours['solo_checked']} | |",
    ]


def main(preset: str, ours_file: str, peer_file: str, invariant_file: str | None = None) -> None:
    ours = json.loads(Path(ours_file).read_text())
    peer = json.loads(Path(peer_file).read_text())
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}×" if a and b else "–"

    lines = [
        f"# {preset}, AWQ 4-bit g128, random weights in the real shapes — {device}",
        "",
        f"tameshi (`tameshi bench`) vs the notebook stack ({peer['stack']}, `model.generate`), same "
        "checkpoint, same machine, one after the other. Greedy, EOS ignored.",
        "",
        "| measure | tameshi | notebook stack | ratio |",
        "|---|---:|---:|---:|",
        f"| batch-1 decode, {ours['prompt_len']}-token prompt (tokens/s) | {ours['decode_tps']:.1f} "
        f"| {peer['decode_tps']:.2f} | {ratio(ours['decode_tps'], peer['decode_tps'])} |",
        f"| TTFT, {ours['ttft_prompt_len']}-token prompt (s) | {ours['ttft_s']:.3f} | {peer['ttft_s']:.3f} "
        f"| {ratio(peer['ttft_s'], ours['ttft_s'])} faster |",
        f"| aggregate, {ours['concurrency']} concurrent ({ours['concurrent_prompt_len']} in, "
        f"{ours['concurrent_gen_len']} out) (tokens/s) | {ours['aggregate_tps']:.0f} | – | – |",
        *step_rows(ours.get("concurrent_steps")),
        f"| greedy batch outputs equal to solo runs (equal prefix, tokens) | {ours['solo_equal']}/"
        f"{ours['solo_checked']} ({', '.join(map(str, ours['solo_common_prefix']))}) | – | – |",
        f"| weight bandwidth at batch 1 (GB/s) | {ours['weight_gbps']:.0f} "
        f"({100 * ours['bandwidth_share']:.0f}% of the measured {ours['copy_gbps']:.0f}) | – | – |",
        f"| KV cache capacity (tokens) | {ours['kv_tokens']:,} | – | – |",
        f"| load time (s) | {ours['load_s']:.1f} | {peer['load_s']:.1f} | |",
        f"| peak host memory, whole process (GB) | {ours['peak_host_gb']:.2f} | – | |",
        f"| peak GPU memory (GB; tameshi's includes its preallocated KV pool) | {ours['peak_gpu_gb']:.1f} "
        f"| {peer['peak_gpu_gb']:.1f} | |",
        f"| GPU memory in use at the end, whole device (GB) | {ours.get('gpu_used_gb', 0):.1f} | – | |",
        "",
        f"Weights read per token: {ours['weight_gb']:.2f} GB.",
    ]
    if invariant_file:
        lines += invariant_rows(json.loads(Path(invariant_file).read_text()), ours)
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:5])
