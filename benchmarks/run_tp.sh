#!/usr/bin/env bash
# Tensor parallel on one host of 2 GPUs (the nvidia-h200-x2 kind), everything in one run:
#   1. synthetic DeepSeek-LLM-7B fp16, written to disk: tp=1 against tp=2 (speed; greedy tokens in
#      fp16, and again in float32 where they must be equal);
#   2. synthetic DeepSeek-LLM-67B bf16 at tp=2: its checkpoint (134 GB) does not fit the machine's
#      128 GB disk, so each rank draws the same random tensors in memory (`synth:PRESET`) and keeps
#      its shard; loader, sharding and engine are the written checkpoint's.
#
#   benchmarks/run_tp.sh [RESULTS_DIR]
set -uo pipefail
results=${1:-benchmarks/results}
work=${WORK:-/tmp/tameshi-tp}
day=$(date +%F)
mkdir -p "$work" "$results"
# NVLink SHARP multicast stays off on the lent multi-GPU machines (their KINDS.md)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nvidia-smi topo -m || true

ckpt=$work/deepseek-llm-7b-fp16
[ -f "$ckpt/config.json" ] || python -m tameshi synth deepseek-llm-7b "$ckpt" --quant fp16 --device cuda
python benchmarks/tp_scaling.py "$ckpt" --tp 1 2 --dtype float16 --exact-dtype float32 \
    --prompt-len 128 --gen-len 128 --ttft-prompt-len 1024 --concurrency 8 --check-prompts 4 --check-len 32 \
    --md "$results/tp-$day-deepseek-llm-7b.md" --json "$results/tp-$day-deepseek-llm-7b.json"
rm -rf "$ckpt"

python -m tameshi bench --model synth:deepseek-llm-67b --dtype bfloat16 --tp 2 --prompt-len 128 \
    --gen-len 128 --ttft-prompt-len 1024 --concurrency 8 --solo-checks 1 \
    --json "$results/tp-$day-deepseek-llm-67b-bf16.json" | tee "$results/tp-$day-deepseek-llm-67b-bf16.txt"
