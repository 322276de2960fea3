"""Tensor parallel: one model split over several processes (GPUs with NCCL, or CPU with gloo).

shard.py   which slice of each checkpoint tensor a rank keeps; the per-rank shapes; divisibility checks
group.py   a rank's view: its rank, world, device, and the collectives the layers call
launch.py  starting the ranks: under torchrun, or rank 0 spawning the others itself
follower.py  ranks 1..world-1: run the forward of each step rank 0 plans

The model stays plain PyTorch: `LlamaForCausalLM(config, tp)` builds this rank's shard and its
attention and MLP blocks end in one all-reduce each; with tp=None nothing here is called.
"""
