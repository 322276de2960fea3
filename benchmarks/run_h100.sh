#!/usr/bin/env bash
# tameshi against the notebook stack on one synthetic AWQ checkpoint, same machine, same run.
#
#   benchmarks/run_h100.sh [PRESET] [RESULTS_DIR]     (PRESET: deepseek-llm-67b | deepseek-llm-7b)
#
# Needs the notebook stack's wheels installed in $PEER_SITE (see benchmarks/peers/notebook_stack.py)
# and ~40 GB of disk in $WORK for the 67B checkpoint. Writes RESULTS_DIR/h100-<date>-<preset>.md.
# INVARIANT=1 also runs tameshi's bench with --batch-invariant (4 requests checked against solo runs).
# BENCH_ARGS go to both tameshi bench runs (e.g. "--gpu-memory-utilization 0.53" for an 80 GB budget).
set -euo pipefail
preset=${1:-deepseek-llm-67b}
results=${2:-benchmarks/results}
work=${WORK:-/tmp/tameshi-bench}
peer=${PEER_SITE:-/tmp/peer}
ckpt=$work/$preset-awq
mkdir -p "$work" "$results"

[ -f "$ckpt/config.json" ] || python -m tameshi synth "$preset" "$ckpt" --quant awq --device cuda
python -m tameshi bench --model "$ckpt" --prompt-len 128 --gen-len 128 --ttft-prompt-len 1024 \
    --concurrency 64 --concurrent-prompt-len 512 --concurrent-gen-len 256 --solo-checks 2 \
    ${BENCH_ARGS:-} --json "$results/tameshi-$preset.json"
invariant=()
if [ "${INVARIANT:-0}" = 1 ]; then
    python -m tameshi bench --model "$ckpt" --prompt-len 128 --gen-len 128 --ttft-prompt-len 1024 \
        --concurrency 64 --concurrent-prompt-len 512 --concurrent-gen-len 256 --solo-checks 4 \
        --batch-invariant ${BENCH_ARGS:-} --json "$results/tameshi-$preset-invariant.json"
    invariant=("$results/tameshi-$preset-invariant.json")
fi
PYTHONPATH="$peer:${PYTHONPATH:-}" python benchmarks/peers/notebook_stack.py "$ckpt" \
    --prompt-len 128 --gen-len "${PEER_GEN_LEN:-32}" --ttft-prompt-len 1024 --json "$results/peer-$preset.json"
python benchmarks/h100_report.py "$preset" "$results/tameshi-$preset.json" "$results/peer-$preset.json" "${invariant[@]}" \
    > "$results/h100-$(date +%F)-$preset.md"
cat "$results/h100-$(date +%F)-$preset.md"
