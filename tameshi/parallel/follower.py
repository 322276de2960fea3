"""Ranks 1 .. world-1: run the forward of each step rank 0 plans, until it says stop.

Rank 0 owns everything but the matmuls: scheduling, the block manager and its prefix cache,
tokenization, sampling and I/O. Before each forward it broadcasts the step's plan (token ids,
positions, per-sequence block table / start / length spans, and the rows whose logits it needs), and
every rank runs the same forward on it, so each follower's KV pool holds its heads of the same
slots. Only rank 0 samples: the logits are gathered on every rank (the gather is part of the
forward), but sampling state (seeded generators, penalties, stop strings) lives with rank 0's
sequences alone, so there is nothing to keep in step. This is the simplest design that is exactly
tp=1's engine on rank 0; its cost is one small pickled message per step on the gloo control group.
Decode steps that rank 0 replays as CUDA graphs (EngineConfig.cuda_graphs) arrive as CaptureGraphs
once and then a GraphStep each: the follower captures and replays its own (engine/cuda_graphs.py).
"""

from __future__ import annotations

import sys

import torch

from tameshi.engine.paged_cache import PagedKVCache
from tameshi.engine.runner import StepPlan, forward_step
from tameshi.model.llama import LlamaForCausalLM


@torch.inference_mode()
def follow(model: LlamaForCausalLM) -> None:
    """Serve rank 0's steps with this rank's shard of `model`; returns when rank 0 closes."""
    tp = model.tp
    cache: PagedKVCache | None = None
    graphs = None
    device, dtype = model.embed_tokens.weight.device, model.embed_tokens.weight.dtype
    while True:
        message = tp.receive()
        if message is None:
            return
        if isinstance(message, StepPlan):
            forward_step(model, cache, message)
        elif isinstance(message, tuple):  # ("cache", num_blocks, block_size): rank 0 sized its pool
            _, num_blocks, block_size = message
            if graphs is not None:  # a new pool: graphs made for the old one are stale
                graphs.release()
                graphs = None
            cache = PagedKVCache(model.rank_config, num_blocks, block_size, device, dtype)
        else:
            graphs = _graph_message(model, cache, graphs, message)


def _graph_message(model: LlamaForCausalLM, cache: PagedKVCache, graphs, message):
    """CaptureGraphs: capture along with rank 0; GraphStep: replay one decode step. -> the graphs."""
    from tameshi.engine.cuda_graphs import CaptureGraphs, DecodeGraphs, GraphStep

    if isinstance(message, CaptureGraphs):
        if graphs is None:
            graphs = DecodeGraphs(model, cache, message.max_batch, message.max_model_len)
            model.tp.before_close.append(graphs.release)
        graphs.release()
        graphs.capture()
    elif isinstance(message, GraphStep):
        graphs.run(message.ids, message.positions, message.slots, message.tables)
    else:
        raise TypeError(f"unknown step message {type(message).__name__}")
    return graphs


def main(argv: list[str]) -> None:
    """`python -m tameshi.parallel.follower MODEL DEVICE DTYPE`, started by rank 0 (launch.py)."""
    import os
    import signal

    from tameshi.api import LLM
    from tameshi.errors import first_line

    # Ctrl-C in the terminal reaches the whole process group: rank 0 handles it (stopping an
    # answer, or closing, which stops us); a follower interrupted mid-step would hang rank 0.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    model, device, dtype = argv
    rank = os.environ["RANK"]
    try:
        # LLM() on a follower rank loads its shard, follows rank 0 and exits: it never returns
        LLM(model, device=device, dtype=dtype or None, progress=False, tp=int(os.environ["WORLD_SIZE"]))
    except Exception as e:  # rank 0 went away, or this shard could not load: one line, not a traceback
        print(
            f"tameshi: tensor-parallel rank {rank} stops: {type(e).__name__}: {first_line(e)}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main(sys.argv[1:])
