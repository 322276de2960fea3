"""Safetensors checkpoints: find the shards, validate them, stream tensors one at a time.

Only safetensors is read: pickled `.bin` weights are refused, since unpickling runs code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from tameshi.errors import CorruptCheckpointError, ModelNotFoundError, UnsupportedModelError

INDEX_NAME = "model.safetensors.index.json"


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a HF folder, from the shard index when there is one."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CorruptCheckpointError(f"{index} is not a valid shard index ({e})") from None
        files = sorted({folder / name for name in weight_map.values()})
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise CorruptCheckpointError(
                f"shard {missing[0].name} named in {INDEX_NAME} is missing from {folder}"
            )
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise UnsupportedModelError(
            f"{folder} has only pickled .bin weights, which tameshi never loads (unpickling runs code); "
            "convert them to safetensors first"
        )
    raise ModelNotFoundError(f"{folder} has no *.safetensors weights")


def iter_tensors(files: list[Path], device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) across shards; each tensor is read from the memory map only when asked for."""
    seen: set[str] = set()
    for path in files:
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    if name in seen:
                        raise CorruptCheckpointError(f"tensor {name} appears in more than one shard")
                    seen.add(name)
                    yield name, f.get_tensor(name)
        except SafetensorError as e:
            raise CorruptCheckpointError(f"{path.name} is not a valid safetensors file ({e})") from None
        except OSError as e:
            raise CorruptCheckpointError(f"cannot read {path} ({e.strerror or e})") from None
