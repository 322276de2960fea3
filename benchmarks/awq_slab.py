"""A one-row dp2a AWQ kernel over column slabs, against awq_x16's split-K kernel, at DeepSeek-LLM-67B's
shapes on one GPU (issue 4, check 5):

    python benchmarks/awq_slab.py            (on a GPU)
    TRITON_INTERPRET=1 python benchmarks/awq_slab.py --check      (the kernel against the reference, on CPU)

Each program takes `bn` columns over all of K (or 1/split of it), so there is no split-K sum (or a
two-way one); its tensors are [pairs of a group, ug groups x bn columns] so that each thread holds a
whole group's row pairs for its 4 columns and sums them in registers, with the integer products,
zero points and scales of awq_x16 (x quantized to int16 by quantize_x beforehand, not counted).
Loads of 64-256 bytes a row (bn 16-64 columns) instead of awq_x16's 1 KB. Times per call inside a
CUDA graph over weight copies larger than L2 together, with PDL, as in benchmarks/awq_kernels.py.

"slabbed words": the same kernel on the words laid out slab by slab (slabbed(): each program's K/8
rows of bn words in one run of memory, so its loads are 2-8 KB runs, not 64-256-byte rows 32 KB
apart). On an H200 this changed nothing that matters (o's best 10.64 µs against 10.74;
benchmarks/results/awq-tries-h200-2026-12-04.md): where the slab kernel's bytes lie in DRAM is not
what holds it back.
"""

# ruff: noqa: B023  (every closure here is called within the loop iteration that made it)
from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from tameshi.kernels import interpreted
from tameshi.kernels.awq_triton import KPacked, _store_output, kdequantize_reference, kpack, split_k_scratch
from tameshi.kernels.awq_x16 import _CONSTRAINTS, _PACK, _ROW_PAIR_PTX, quantize_x


@triton.jit
def _load(w_ptr, unit, j, m, col0, N: tl.constexpr, UG: tl.constexpr, PAIRS: tl.constexpr, BN: tl.constexpr,
          K8: tl.constexpr = 0, SLABBED: tl.constexpr = False):  # fmt: skip
    """Unit `unit`'s words [PAIRS, UG * BN], even and odd rows: (j, m) is pair j of group m // BN, column m % BN.
    SLABBED: the words as slabbed() lays them out, each slab's K/8 rows of BN words in one run."""
    q = (unit * UG + m // BN) * PAIRS + j  # row pair
    if SLABBED:
        at = w_ptr + col0.to(tl.int64) * K8 + (2 * q.to(tl.int64)) * BN + m % BN
        return tl.load(at), tl.load(at + BN)
    at = w_ptr + (2 * q.to(tl.int64)) * N + (col0 + m % BN)
    return tl.load(at), tl.load(at + N)


@triton.jit
def _sums(acc, wa, wb, unit, j, m, col0, q_ptr, xs_ptr, xsum_ptr, z_ptr, s_ptr, N: tl.constexpr,
          UG: tl.constexpr, PAIRS: tl.constexpr, BN: tl.constexpr, ASM: tl.constexpr):  # fmt: skip
    """acc [UG * BN] + the unit's products, each thread's pairs of a group summed in int32 first."""
    q = (unit * UG + m // BN) * PAIRS + j
    x_at = q_ptr + q.to(tl.int64) * 16
    if ASM:
        dots = tl.inline_asm_elementwise(
            _ROW_PAIR_PTX, _CONSTRAINTS, [wa, wb, tl.broadcast_to(x_at, wa.shape)], dtype=tl.int32,
            is_pure=False, pack=_PACK,
        )  # fmt: skip
    else:  # awq_x16._unit_dots' stand-in
        dots = tl.zeros(wa.shape, dtype=tl.int32)
        for n in tl.static_range(8):
            slot: tl.constexpr = n // 2 + 4 * (n % 2)
            xa = tl.load(x_at + slot).to(tl.int32)
            xb = tl.load(x_at + 8 + slot).to(tl.int32)
            dots += ((wa >> (4 * n)) & 0xF) * xa + ((wb >> (4 * n)) & 0xF) * xb
    isum = tl.sum(dots, axis=0)
    m1 = tl.arange(0, UG * BN)  # a fresh range: its layout is isum's, with no conversion between
    g = unit * UG + m1 // BN
    at = g * N + col0 + m1 % BN
    exact = isum - tl.load(z_ptr + at).to(tl.int32) * tl.load(xsum_ptr + g)
    return acc + exact.to(tl.float32) * (tl.load(s_ptr + at).to(tl.float32) * tl.load(xs_ptr + g))


@triton.jit
def _slab_kernel(
    q_ptr, xs_ptr, xsum_ptr, w_ptr, z_ptr, s_ptr, y_ptr, ws_ptr, count_ptr, N: tl.constexpr,
    BN: tl.constexpr, UG: tl.constexpr, PAIRS: tl.constexpr, UNITS: tl.constexpr, SPLIT_K: tl.constexpr,
    DEPTH: tl.constexpr, ASM: tl.constexpr, PDL: tl.constexpr, K8: tl.constexpr = 0, SLABBED: tl.constexpr = False,
):  # fmt: skip
    """Program (slab, -, K split): UNITS units of UG groups, DEPTH loaded ahead (as stream_units)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    first = tl.program_id(2) * UNITS
    j = tl.arange(0, PAIRS)[:, None]
    m = tl.arange(0, UG * BN)[None, :]
    col0 = tl.program_id(0) * BN
    a0, b0 = _load(w_ptr, first, j, m, col0, N, UG, PAIRS, BN, K8, SLABBED)
    if DEPTH == 2:
        a1, b1 = _load(w_ptr, first + 1, j, m, col0, N, UG, PAIRS, BN, K8, SLABBED)
    if PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros((UG * BN,), dtype=tl.float32)
    for i in tl.static_range(UNITS - DEPTH):
        a2, b2 = _load(w_ptr, first + i + DEPTH, j, m, col0, N, UG, PAIRS, BN, K8, SLABBED)
        acc = _sums(
            acc, a0, b0, first + i, j, m, col0, q_ptr, xs_ptr, xsum_ptr, z_ptr, s_ptr, N, UG, PAIRS, BN, ASM
        )
        if DEPTH == 2:
            a0, b0, a1, b1 = a1, b1, a2, b2
        else:
            a0, b0 = a2, b2
    if DEPTH == 2:
        last = first + UNITS - 2
        acc = _sums(
            acc, a0, b0, last, j, m, col0, q_ptr, xs_ptr, xsum_ptr, z_ptr, s_ptr, N, UG, PAIRS, BN, ASM
        )
        a0, b0 = a1, b1
    last = first + UNITS - 1
    acc = _sums(acc, a0, b0, last, j, m, col0, q_ptr, xs_ptr, xsum_ptr, z_ptr, s_ptr, N, UG, PAIRS, BN, ASM)
    out = tl.sum(tl.reshape(acc, (UG, BN)), axis=0)
    offs_n = col0 + tl.arange(0, BN)
    _store_output(
        out, y_ptr + offs_n, ws_ptr + offs_n, count_ptr + tl.program_id(0), offs_n < N, SPLIT_K, SPLIT_K > 1
    )


def slabbed(packed, bn: int):
    """The words [K/8, N] laid out as [N/bn, K/8, bn]: each program's slab in one run of memory."""
    k8, n = packed.qweight.shape
    words = packed.qweight.view(k8, n // bn, bn).permute(1, 0, 2).contiguous()
    return KPacked(words.view(k8, n), packed.zeros, packed.scales, packed.group, packed.paired)


def launch(prepared, packed, y, ws, counts, bn=16, ug=16, split=1, depth=1, warps=2, slab_layout=False):
    """One call: `bn` columns a program (`warps` warps, bn * ug = 128 a warp), units of `ug` groups."""
    q, xs, xsum = prepared
    k, n = packed.shape
    units = k // packed.group // ug // split
    if units * ug * split * packed.group != k or bn * ug != 128 * warps:
        raise ValueError(
            f"no slab tile of {bn} columns, {ug} groups a unit, {warps} warps, split {split} at K {k}"
        )
    extra = {} if interpreted() else {"launch_pdl": True}
    return _slab_kernel[(n // bn, 1, split)](
        q, xs, xsum, packed.qweight, packed.zeros, packed.scales, y, ws, counts, N=n, BN=bn, UG=ug,
        PAIRS=packed.group // 16, UNITS=units, SPLIT_K=split, DEPTH=depth, ASM=not interpreted(),
        PDL=not interpreted(), K8=k // 8, SLABBED=slab_layout, num_warps=warps, num_stages=1, **extra,
    )  # fmt: skip


TILES = [dict(bn=16, ug=16, warps=2), dict(bn=16, ug=16, depth=2, warps=2), dict(bn=32, ug=16, warps=4),
         dict(bn=32, ug=16, depth=2, warps=4), dict(bn=64, ug=16, warps=8), dict(bn=16, ug=8, warps=1),
         dict(bn=32, ug=8, warps=2), dict(bn=64, ug=8, warps=4), dict(bn=16, ug=16, warps=2, split=2),
         dict(bn=32, ug=16, warps=4, split=2), dict(bn=32, ug=4, warps=1, split=4),
         dict(bn=32, ug=4, warps=1, split=43)]  # fmt: skip


def random_pack(k: int, n: int, group: int, device: str) -> object:
    qweight = torch.randint(-(2**31), 2**31 - 1, (k, n // 8), dtype=torch.int32, device=device)
    qzeros = torch.randint(-(2**31), 2**31 - 1, (k // group, n // 8), dtype=torch.int32, device=device)
    scales = (torch.rand(k // group, n, device=device) * 0.01 + 0.001).half()
    return kpack(qweight, qzeros, scales, group, paired=True)


def check() -> None:
    """Small shapes under TRITON_INTERPRET: the slab kernel against the fp32 reference."""
    torch.manual_seed(0)
    for k, n, bn, ug, split, depth, warps in [(1024, 64, 16, 8, 1, 1, 1), (2048, 32, 32, 4, 2, 1, 1),
                                              (2048, 64, 16, 8, 1, 2, 1)]:  # fmt: skip
        packed = random_pack(k, n, 128, "cpu")
        x = torch.randn(1, k).half()
        x[0, 5] = 30.0
        ref = x.float() @ kdequantize_reference(packed)
        y = torch.empty(1, n, dtype=torch.float16)
        ws, counts = torch.zeros(n), torch.zeros(n, dtype=torch.int32)
        for slab_layout in (False, True):
            weights = slabbed(packed, bn) if slab_layout else packed
            launch(quantize_x(x, 128), weights, y, ws, counts, bn, ug, split, depth, warps, slab_layout)
            err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
            print(
                f"K {k} N {n}, {bn} columns, {ug} groups a unit, split {split}, depth {depth}, slabbed {slab_layout}: error {err:.1e}"
            )
            assert err < 2e-3


def main() -> None:
    from awq_kernels import GROUP, SHAPES, OneRowCase, graph_ms, print_run_header, weight_copies

    copy_gbs = print_run_header()
    print(OneRowCase.HEADER)
    for name, (k, n) in SHAPES.items():
        packs = [random_pack(k, n, GROUP, "cuda") for _ in range(weight_copies(k, n))]
        case = OneRowCase(name, packs, copy_gbs)
        x, prepared, y, row, error = case.x, case.prepared, case.y, case.row, case.error
        ws, counts = split_k_scratch(x.device, n, n // 16)
        split_k = case.x16_baseline(packs, "awq_x16, split K (x16_config)")
        for tile in TILES:
            try:
                launch(prepared, packs[0], y, ws, counts, **tile)
            except ValueError:
                continue  # the tile does not divide this K
            for slab_layout in (False, True):
                weights = [slabbed(p, tile["bn"]) for p in packs] if slab_layout else packs
                kernel = launch(prepared, weights[0], y, ws, counts, **tile, slab_layout=slab_layout)
                err = error()
                ms = graph_ms(
                    [lambda p=p: launch(prepared, p, y, ws, counts, **tile, slab_layout=slab_layout) for p in weights], 50
                )  # fmt: skip
                label = ("slabbed words, " if slab_layout else "slab: ") + ", ".join(
                    f"{key} {value}" for key, value in tile.items()
                )
                row(label, ms, f"{kernel.n_regs}", err)
                del weights
        row("awq_x16, split K, again", split_k())
        del packs, case
        torch.cuda.empty_cache()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--check", action="store_true", help="small shapes against the reference (CPU, interpreted)"
    )
    if parser.parse_args().check:
        check()
    else:
        main()
