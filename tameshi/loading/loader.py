"""Checkpoint -> ready model: config, tokenizer, chat template, weights streamed onto the device."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tameshi.chat import ChatTemplate, resolve_chat_template
from tameshi.errors import CorruptCheckpointError, InvalidRequestError, TemplateError
from tameshi.loading.awq import merge_side_config
from tameshi.loading.build import build_model
from tameshi.loading.hub import ModelSource, resolve
from tameshi.loading.safetensors import checkpoint_files, iter_tensors
from tameshi.model.config import ModelConfig
from tameshi.model.linear import AWQLinear
from tameshi.model.llama import LlamaForCausalLM
from tameshi.tokenizer import Tokenizer

if TYPE_CHECKING:
    from tameshi.parallel.launch import Launch


@dataclass
class LoadedModel:
    model: LlamaForCausalLM
    config: ModelConfig
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    generation_config: dict
    source: ModelSource
    device: torch.device
    dtype: torch.dtype
    quantize: str | None = None
    launch: Launch | None = None  # tensor parallel: this process's rank and the others' processes


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidRequestError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise InvalidRequestError(f"tameshi runs on cpu or cuda, not {dev.type!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError(f"device {device!r}, but this torch ({torch.__version__}) sees no CUDA GPU")
    return dev


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device, config: ModelConfig) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        names = {
            "float32": torch.float32,
            "fp32": torch.float32,
            "float16": torch.float16,
            "fp16": torch.float16,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
        }
        if dtype not in names:
            raise InvalidRequestError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
        return names[dtype]
    if device.type == "cpu":
        return torch.float32  # CPU half-precision matmuls are slow and inexact
    return torch.float16 if config.torch_dtype == "float16" else torch.bfloat16


def load_model(
    name: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    progress: bool = True,
    quantize: str | None = None,
    tp: int = 1,
) -> LoadedModel:
    """`quantize="int8"|"int4"`: weight-only at run time, an opt-in CPU speed mode (numbers change slightly).

    `tp` > 1: this process becomes one rank of a tensor-parallel model and loads only its shard
    (tameshi.parallel.launch: under torchrun it is the rank torchrun says; otherwise rank 0, and
    it starts the other ranks itself)."""
    if not isinstance(tp, int) or tp < 1:
        raise InvalidRequestError(f"tp must be a whole number of processes >= 1, got {tp!r}")
    if quantize not in (None, "int8", "int4"):
        raise InvalidRequestError(f"unknown run-time quantization {quantize!r}; choose int8 or int4")
    if tp > 1 and quantize is not None:
        raise InvalidRequestError("run-time --quantize does not combine with --tp; use an AWQ checkpoint")
    source = resolve(name)
    dev = pick_device(device)
    synth = None
    if source.kind == "gguf":
        from tameshi.loading.gguf import open_gguf

        ck = open_gguf(source.path)
        raw_config, tensors = ck.config, ck.tensors()
        generation_config = ck.generation_config
        tokenizer = Tokenizer(ck.tokenizer, ck.tokenizer_config, generation_config)
        template_origin = "GGUF metadata"
    elif source.kind == "synth":
        from tameshi.quantize.synth import InMemorySynth

        synth = InMemorySynth.parse(str(source.path))
        raw_config, generation_config = synth.config(), {}
        tokenizer = Tokenizer.from_dir(synth.tokenizer_dir())
        tensors = None  # drawn below, on the device this rank loads to
        template_origin = "tokenizer_config.json"
    else:
        raw_config = merge_side_config(source.path, _read_json(source.path / "config.json"))
        ModelConfig.from_hf(raw_config)  # an unsupported model is reported before anything else
        generation_config = _read_json(source.path / "generation_config.json", missing_ok=True)
        tokenizer = Tokenizer.from_dir(source.path)
        tensors = iter_tensors(checkpoint_files(source.path))
        template_origin = "tokenizer_config.json"
    config = ModelConfig.from_hf(raw_config)
    dt = pick_dtype(dtype, dev, config)
    launch = None
    if tp > 1:
        launch = _start_tensor_parallel(config, tp, dev, source, dt)
        dev, progress = launch.tp.device, progress and launch.tp.is_leader
    if synth is not None:
        tensors = synth.tensors(config, dev)
    try:
        model = build_model(config, tensors, dev, dt, progress=progress, tp=launch and launch.tp)
        if launch is not None:
            launch.connect()
    except BaseException:
        if launch is not None:
            launch.abort()  # the followers this rank started would wait for it forever
        raise
    if quantize is not None:
        if dev.type != "cpu":
            raise InvalidRequestError(f"run-time {quantize} is a CPU mode; on a GPU use an AWQ checkpoint")
        model.quantize(quantize)
    if dev.type == "cuda" and dt != torch.float32:  # fp32 runs the PyTorch reference, no Triton
        for module in model.modules():
            if isinstance(module, AWQLinear):
                module.repack_for_kernels()
    try:
        template = resolve_chat_template(tokenizer, origin=template_origin)
    except TemplateError:
        template = None  # raw generate() still works; chat() says why it cannot
    return LoadedModel(
        model, config, tokenizer, template, generation_config, source, dev, dt, quantize, launch
    )


def _start_tensor_parallel(
    config: ModelConfig, tp: int, device: torch.device, source: ModelSource, dtype: torch.dtype
) -> Launch:
    from tameshi.parallel.launch import Launch
    from tameshi.parallel.shard import check_shardable

    check_shardable(config, tp)  # before any process starts
    launch = Launch(tp, device)
    if launch.tp.is_leader and not launch.under_torchrun:
        launch.spawn(str(source.path), str(dtype).removeprefix("torch."))
    return launch


def _read_json(path: Path, missing_ok: bool = False) -> dict:
    if not path.is_file():
        if missing_ok:
            return {}
        raise CorruptCheckpointError(f"{path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CorruptCheckpointError(f"{path} does not hold a JSON object")
    return data
