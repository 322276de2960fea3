"""Build a model on the meta device and stream checkpoint tensors into it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch

from tameshi.model.config import ModelConfig
from tameshi.model.llama import LlamaForCausalLM

if TYPE_CHECKING:
    from tameshi.parallel.group import TensorParallel


def build_model(
    config: ModelConfig,
    tensors: Iterable[tuple[str, torch.Tensor]],
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = False,
    tp: TensorParallel | None = None,
) -> LlamaForCausalLM:
    # Built on the meta device, then given real (uninitialised) memory on the target device only:
    # no host copy of the whole model ever exists. Under tensor parallel, only this rank's shard.
    with torch.device("meta"):
        model = LlamaForCausalLM(config, tp).to(dtype)
    model = model.to_empty(device=device)
    model.load_weights(_with_progress(tensors, len(model.expected_tensors()), progress))
    return model.eval()


def _with_progress(tensors: Iterable, total: int, show: bool) -> Iterator:
    if not show:
        yield from tensors
        return
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # stderr: stdout carries the model's answer
    columns = (
        TextColumn("loading weights"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[gb]:.1f} GB · {task.fields[rate]:.2f} GB/s"), TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("load", total=total, gb=0.0, rate=0.0)
        start, done = time.perf_counter(), 0
        for name, tensor in tensors:
            yield name, tensor
            done += tensor.numel() * tensor.element_size()
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.update(task, advance=1, gb=done / 1e9, rate=done / 1e9 / elapsed)
