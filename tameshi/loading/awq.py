"""AutoAWQ checkpoints (the `*-AWQ` repos): their config, and the GEMM/GEMV int4 tensor layouts.

GEMM (TheBloke, AutoAWQ default), for a linear of K inputs and N outputs, group size G:
  qweight int32 [K, N/8], qzeros int32 [K/G, N/8], scales fp16 [K/G, N]; W^T[k, n] = (q - z) * s.
  Eight 4-bit values per int32 along N, stored in the order 0, 2, 4, 6, 1, 3, 5, 7 (AutoAWQ's
  AWQ_ORDER), so logical column j sits at bit 4 * REVERSE_ORDER[j].
GEMV: qweight int32 [N, K/8] packed along K in plain order; qzeros/scales [N, padded groups].
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tameshi.errors import CorruptCheckpointError, UnsupportedModelError

AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_SIDE_FILES = ("quant_config.json", "quantize_config.json")


@dataclass(frozen=True)
class AWQConfig:
    group_size: int
    version: str = "gemm"  # "gemm" or "gemv"
    zero_point: bool = True
    bits: int = 4
    modules_to_not_convert: tuple[str, ...] = field(default=())

    @classmethod
    def from_dict(cls, d: dict) -> AWQConfig:
        bits = int(d.get("bits", d.get("w_bit", 4)))
        group = int(d.get("group_size", d.get("q_group_size", 128)))
        version = str(d.get("version", d.get("format", "gemm"))).lower()
        if bits != 4:
            raise UnsupportedModelError(
                f"AWQ with {bits}-bit weights is not supported; tameshi runs 4-bit AWQ"
            )
        if version not in ("gemm", "gemv"):
            raise UnsupportedModelError(
                f"AWQ version {version!r} is not supported; tameshi reads gemm and gemv"
            )
        if group != -1 and group <= 0:
            raise UnsupportedModelError(f"AWQ group size {group} is invalid")
        if not d.get("zero_point", True):
            raise UnsupportedModelError(
                "AWQ without zero points is not supported (no published checkpoint uses it)"
            )
        skip = tuple(d.get("modules_to_not_convert") or ())
        return cls(group_size=group, version=version, bits=bits, modules_to_not_convert=skip)

    def converts(self, module_name: str) -> bool:
        return not any(skip in module_name for skip in self.modules_to_not_convert)


def merge_side_config(folder: Path, config: dict) -> dict:
    """config.json plus AutoAWQ's quant_config.json when config.json lacks quantization_config."""
    if config.get("quantization_config") is not None:
        return config
    for name in _SIDE_FILES:
        if (folder / name).is_file():
            try:
                side = json.loads((folder / name).read_text())
            except json.JSONDecodeError as e:
                raise CorruptCheckpointError(f"{folder / name} is not valid JSON ({e})") from None
            return {**config, "quantization_config": {"quant_method": "awq", **side}}
    return config


def unpack_gemm(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] in AutoAWQ's interleaved order -> uint8 values [R, 8C] in logical order."""
    shifts = torch.tensor(AWQ_REVERSE_ORDER, device=packed.device, dtype=torch.int32) * 4
    return ((packed[:, :, None] >> shifts) & 0xF).reshape(packed.shape[0], -1).to(torch.uint8)


def pack_gemm(values: torch.Tensor) -> torch.Tensor:
    """uint values [R, 8C] (0..15) -> int32 [R, C], AutoAWQ's order (the writer side, for quantize)."""
    v = values.to(torch.int64).reshape(values.shape[0], -1, 8)[:, :, list(AWQ_ORDER)]
    shifts = torch.arange(8, device=values.device, dtype=torch.int64) * 4
    packed = (v << shifts).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def dequantize_gemm(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int
) -> torch.Tensor:
    """W^T [K, N] in float32: (q - z) * s, group by group along K. The reference for every kernel."""
    q = unpack_gemm(qweight).float()
    z = unpack_gemm(qzeros).float().repeat_interleave(group, dim=0)
    s = scales.float().repeat_interleave(group, dim=0)
    return (q - z) * s


def gemv_to_gemm(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Repack AutoAWQ GEMV tensors ([N, K/8] along K, padded group columns) into the GEMM layout."""
    n, k = qweight.shape[0], qweight.shape[1] * 8
    n_groups = k // group
    shifts = torch.arange(8, dtype=torch.int32) * 4
    q = ((qweight[:, :, None] >> shifts) & 0xF).reshape(n, k)  # plain order along K
    z = ((qzeros[:, :, None] >> shifts) & 0xF).reshape(n, -1)[:, :n_groups]
    s = scales[:, :n_groups]
    return pack_gemm(q.t().contiguous()), pack_gemm(z.t().contiguous()), s.t().contiguous()
