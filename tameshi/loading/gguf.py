"""Reading a llama-architecture GGUF as if it were a Hugging Face checkpoint.

`open_gguf` validates the file (gguf_header.check_header walks it with every length bounded) and maps
its metadata to an HF-style config, tokenizer and generation config; `GGUFCheckpoint.tensors` yields
HF-named float32 tensors one at a time, dequantized and with llama.cpp's Q/K row permutation undone.
`convert_to_hf` writes all of it as a plain HF folder that any HF-folder loader reads.
"""

import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from rich.progress import track
from tokenizers import Tokenizer

from tameshi.errors import CorruptCheckpointError, ModelNotFoundError, UnsupportedModelError
from tameshi.loading.gguf_header import GGUFHeader, Metadata, TensorInfo, check_header
from tameshi.loading.gguf_quants import SUPPORTED_TYPES, dequantize
from tameshi.loading.gguf_tokenizer import VocabSpec, build_tokenizer, read_vocab

__all__ = ["GGUFCheckpoint", "convert_to_hf", "dequantize", "open_gguf", "permute_qk", "unpermute_qk"]

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR = re.compile(r"blk\.(0|[1-9][0-9]*)\.([a-z_]+)\.weight")
_MAX_DIM = 1 << 24  # bounds config values before they size anything (largest real vocabularies are ~2**18)


def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's rotate-half row order -> llama.cpp's interleaved pairs (what convert_hf_to_gguf.py does)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `permute_qk`: GGUF attn_q/attn_k rows back into the HF checkpoint's order."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass(frozen=True)
class _Entry:
    info: TensorInfo
    hf_name: str
    hf_shape: tuple[int, ...]
    qk_heads: int | None  # heads to un-permute over, for q_proj and k_proj


@dataclass
class GGUFCheckpoint:
    path: Path
    config: dict[str, Any]
    tokenizer: Tokenizer
    tokenizer_config: dict[str, Any]
    generation_config: dict[str, Any]
    _reader: GGUFReader = field(repr=False)
    _header: GGUFHeader = field(repr=False)
    _entries: list[_Entry] = field(repr=False)

    def tensor_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """(HF name, HF shape) of every tensor, in the order `tensors` yields them."""
        return [(e.hf_name, e.hf_shape) for e in self._entries]

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """HF-named float32 CPU tensors, one at a time; only the raw bytes of one tensor are copied."""
        for e in self._entries:
            start = self._header.data_offset + e.info.offset
            raw = torch.from_numpy(np.array(self._reader.data[start : start + e.info.n_bytes]))
            tensor = dequantize(raw, e.info.qtype, e.hf_shape)
            if e.qk_heads is not None:
                tensor = unpermute_qk(tensor, e.qk_heads).contiguous()
            yield e.hf_name, tensor


def _f32_decimal(x: float) -> float:
    # GGUF stores these as float32: 1e-5 reads back as 9.99999974e-06. The shortest decimal that
    # round-trips through float32 is the value the HF config had.
    return float(str(np.float32(x)))


def _config(meta: Metadata, spec: VocabSpec, has_lm_head: bool, path: Path) -> dict[str, Any]:
    def required(key: str) -> int:
        value = meta.scalar(f"llama.{key}", "int")
        if value is None or not 0 < value <= _MAX_DIM:
            raise CorruptCheckpointError(f"{path} has a missing or out-of-range llama.{key} ({value}).")
        return value

    hidden, n_heads = required("embedding_length"), required("attention.head_count")
    n_kv_heads = meta.scalar("llama.attention.head_count_kv", "int", n_heads)
    head_dim = meta.scalar("llama.attention.key_length", "int", hidden // n_heads)
    rope_dim = meta.scalar("llama.rope.dimension_count", "int", head_dim)
    if not 0 < n_kv_heads <= n_heads or n_heads % n_kv_heads or not 0 < head_dim <= _MAX_DIM or head_dim % 2:
        raise CorruptCheckpointError(f"{path} has inconsistent attention sizes ({n_heads=}, {n_kv_heads=}).")
    if rope_dim != head_dim or meta.scalar("llama.attention.value_length", "int", head_dim) != head_dim:
        raise UnsupportedModelError(
            f"{path} rotates {rope_dim} of {head_dim} head dims or has a distinct "
            "value head size, which a Llama model does not do."
        )
    eps = meta.scalar("llama.attention.layer_norm_rms_epsilon", "float")
    if eps is None:
        raise CorruptCheckpointError(f"{path} lacks llama.attention.layer_norm_rms_epsilon.")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": required("feed_forward_length"),
        "num_hidden_layers": required("block_count"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": required("context_length"),
        "rope_theta": _f32_decimal(meta.scalar("llama.rope.freq_base", "float", 10000.0)),
        "rms_norm_eps": _f32_decimal(eps),
        "vocab_size": meta.scalar("llama.vocab_size", "int", len(spec.tokens)),
        "tie_word_embeddings": not has_lm_head,
        "rope_scaling": _rope_scaling(meta),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": spec.bos_id,
        "eos_token_id": spec.eos_id,
        "torch_dtype": "float32",
    }
    if not len(spec.tokens) <= config["vocab_size"] <= _MAX_DIM:
        raise CorruptCheckpointError(
            f"{path} has llama.vocab_size {config['vocab_size']} but {len(spec.tokens)} tokens."
        )
    return config


def _rope_scaling(meta: Metadata) -> dict[str, Any] | None:
    kind = meta.scalar("llama.rope.scaling.type", "str")
    factor = meta.scalar("llama.rope.scaling.factor", "float")
    if kind is None and meta.scalar("llama.rope.scale_linear", "float") is not None:
        kind, factor = "linear", meta.scalar("llama.rope.scale_linear", "float")  # the pre-2024 key
    if kind in (None, "none"):
        return None
    scaling: dict[str, Any] = {"rope_type": kind, "factor": factor}
    original = meta.scalar("llama.rope.scaling.original_context_length", "int")
    if original is not None:
        scaling["original_max_position_embeddings"] = original
    return scaling


def _expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, inter, d = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], h), "model.norm.weight": (h,)}
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (config["vocab_size"], h)
    per_layer = {
        "input_layernorm": (h,), "post_attention_layernorm": (h,),
        "self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, q), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
        "mlp.down_proj": (h, inter),
    }  # fmt: skip
    for i in range(config["num_hidden_layers"]):
        for name, shape in per_layer.items():
            shapes[f"model.layers.{i}.{name}.weight"] = shape
    return shapes


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_TENSOR.fullmatch(gguf_name)
    if m is None or m.group(2) not in _LAYER_NAMES:
        return None
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"


def _entries(header: GGUFHeader, config: dict[str, Any], path: Path) -> list[_Entry]:
    expected = _expected_shapes(config)
    entries = []
    for info in header.tensors:
        hf_name = _hf_name(info.name)
        if hf_name is None or hf_name not in expected:
            raise UnsupportedModelError(f"{path} has tensor {info.name!r}, which a Llama model does not use.")
        shape = expected.pop(hf_name)
        if tuple(reversed(info.dims)) != shape:
            raise CorruptCheckpointError(
                f"{path} has {info.name} of shape {tuple(reversed(info.dims))}, "
                f"but its config implies {shape}."
            )
        if info.qtype not in SUPPORTED_TYPES:
            raise UnsupportedModelError(
                f"{path} stores {info.name} as {info.qtype.name}, which tameshi cannot dequantize yet."
            )
        heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
        entries.append(_Entry(info, hf_name, shape, heads.get(info.name.split(".")[-2])))
    if expected:
        raise CorruptCheckpointError(
            f"{path} lacks tensor {next(iter(expected))} (and {len(expected) - 1} more)."
        )
    return entries


def _open_reader(path: Path) -> GGUFReader:
    try:
        return GGUFReader(path)
    except (ValueError, KeyError, IndexError, UnicodeDecodeError, OSError) as e:
        raise CorruptCheckpointError(f"{path} could not be parsed as GGUF: {e}.") from e


def open_gguf(path: str | Path) -> GGUFCheckpoint:
    """Opens a llama-architecture GGUF; other architectures raise UnsupportedModelError."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is not a file.")
    header = check_header(path)
    reader = _open_reader(path)
    if reader.data_offset != header.data_offset or len(reader.tensors) != len(header.tensors):
        raise CorruptCheckpointError(f"{path} has a header that gguf-py and tameshi read differently.")
    meta = Metadata(reader.fields, path)
    arch = meta.scalar("general.architecture", "str")
    if arch != "llama":
        raise UnsupportedModelError(f"{path} is a {arch!r} model; tameshi reads only 'llama' GGUF files.")
    spec = read_vocab(meta, path)
    has_lm_head = any(t.name == "output.weight" for t in header.tensors)
    config = _config(meta, spec, has_lm_head, path)
    entries = _entries(header, config, path)
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": spec.token(spec.bos_id),
        "eos_token": spec.token(spec.eos_id),
        "unk_token": spec.token(spec.unk_id),
        "pad_token": spec.token(spec.pad_id),
        "add_bos_token": spec.add_bos,
        "add_eos_token": spec.add_eos,
        "clean_up_tokenization_spaces": False,
    }
    template = meta.scalar("tokenizer.chat_template", "str")
    if template is not None:
        tokenizer_config["chat_template"] = template
    ids = {"bos_token_id": spec.bos_id, "eos_token_id": spec.eos_id, "pad_token_id": spec.pad_id}
    generation_config = {k: v for k, v in ids.items() if v is not None}
    return GGUFCheckpoint(path, config, build_tokenizer(spec, path), tokenizer_config, generation_config,
                          reader, header, entries)  # fmt: skip


def _write_safetensors(ckpt: GGUFCheckpoint, file: Path, progress: bool) -> None:
    """Streams float32 tensors into a safetensors file; the header is known up front, so no more than
    one dequantized tensor is ever in memory (safetensors.save_file would need them all at once)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in ckpt.tensor_shapes():
        n_bytes = 4 * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n_bytes]}
        offset += n_bytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        items = track(
            ckpt.tensors(), total=len(header) - 1, description="Converting GGUF", disable=not progress
        )
        for _, tensor in items:
            f.write(tensor.numpy().data)  # little-endian float32 on every platform torch runs on
        f.flush()
        os.fsync(f.fileno())


def convert_to_hf(path: str | Path, out_dir: str | Path, progress: bool = True) -> Path:
    """Writes the GGUF at `path` as an HF folder (float32 safetensors); the folder appears whole or not at all."""
    ckpt = open_gguf(path)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; remove it or choose another folder.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _write_safetensors(ckpt, tmp / "model.safetensors", progress)
        ckpt.tokenizer.save(str(tmp / "tokenizer.json"))
        for name, content in (("config.json", ckpt.config), ("tokenizer_config.json", ckpt.tokenizer_config),
                              ("generation_config.json", ckpt.generation_config)):  # fmt: skip
            (tmp / name).write_text(
                json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
        tmp.chmod(0o755)  # mkdtemp makes it owner-only
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
