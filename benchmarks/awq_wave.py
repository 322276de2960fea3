"""A one-wave one-row AWQ kernel: few programs, each streaming a long run of K through a deep
shared-memory pipeline (issue 4, check 5: 85% of the copy bandwidth at one row).

    python benchmarks/awq_wave.py [--quick]

Why. AWQLinear's one-row kernel (awq_gemv._awq_gemv_stream_kernel) holds its loads in registers:
a program can keep only one or two units of weights in flight, so the grid is thousands of short
programs in 2-3 waves, and each wave loads, then computes, then sums its split K. At the 67B qkv and
o shapes that holds it to 64-66% of the copy bandwidth, though its loads alone reach 91-96%
(awq-load-ceiling-h200.md). Here each program stays for the whole call: Triton's pipeliner keeps
STAGES - 1 units of words, zeros and scales in flight through cp.async into shared memory, so the
bytes in flight no longer cost registers; the grid is one wave (a program per SM or two), and the
split-K sum happens once a program. With PDL the first STAGES - 1 units load before the program waits
for the kernel that writes x (the wait is inside the loop, after the pipeliner's prologue).

The products are the streamed kernel's (its PTX, awq_gemv.row_pair_ptx), so the results match it;
each tile's output is checked against awq_matmul's here. Times per call inside a CUDA graph over
weight copies larger than L2 together, as in benchmarks/awq_kernels.py.
"""

# ruff: noqa: B023  (every closure here is called within the loop iteration that made it)
from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from awq_kernels import copy_bandwidth, graph_ms, random_awq, weight_copies

from tameshi.kernels.awq_gemv import _CONSTRAINTS, _PACK, _ROW_PAIR_PTX, _load_unit, _unit_dots
from tameshi.kernels.awq_triton import _store_output, awq_matmul, kpack, split_k_scratch

GROUP = 128
SHAPES = {"qkv 8192→10240": (8192, 10240), "o 8192→8192": (8192, 8192),
          "gate_up 8192→44032": (8192, 44032), "down 22016→8192": (22016, 8192)}  # fmt: skip
# columns, warps, pipeline stages, programs per SM (the grid's target), PDL wait inside the loop[, zeros
# and scales in the words' layout]
TILES_2D = [
    (256, 8, 6, 1, True, True),
    (256, 16, 6, 1, True, True),
    (256, 16, 4, 1, True, True),
    (256, 8, 4, 2, True, True),
    (512, 16, 4, 1, True, True),
    (256, 16, 8, 1, True, True),
]
TILES = [
    (256, 4, 4, 1, True),
    (256, 4, 6, 1, True),
    (256, 4, 8, 1, True),
    (256, 4, 6, 1, False),
    (256, 4, 4, 2, True),
    (256, 4, 6, 2, True),
    (256, 4, 3, 3, True),
    (512, 8, 4, 1, True),
    (512, 8, 6, 1, True),
    (128, 2, 8, 2, True),
    (128, 2, 6, 4, True),
    (128, 2, 12, 2, True),
]
QUICK = [(256, 4, 6, 1, True), (256, 4, 4, 2, True), (512, 8, 4, 1, True)]


@triton.jit
def _wave_kernel(
    x_ptr, w_ptr, z_ptr, s_ptr, y_ptr, ws_ptr, count_ptr, N, stride_xm, stride_ym,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, RU: tl.constexpr, UNITS: tl.constexpr,
    SPLIT_K: tl.constexpr, STAGES: tl.constexpr, FIXUP: tl.constexpr, EVEN: tl.constexpr,
    PDL: tl.constexpr, WAIT_IN_LOOP: tl.constexpr, LOADS_ONLY: tl.constexpr = False, ZS_2D: tl.constexpr = False,
):  # fmt: skip
    """Program (column block, row, K split) sums its split's units (RU word rows of one group each),
    products kept per row pair in registers and summed over the rows once at the end."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    x_row = x_ptr + row * stride_xm
    start = pid_k * UNITS // SPLIT_K
    end = (pid_k + 1) * UNITS // SPLIT_K
    if PDL and not WAIT_IN_LOOP:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros((RU // 2, BLOCK_N), dtype=tl.float32)
    folded = tl.zeros((RU // 2, BLOCK_N), dtype=tl.int32)
    for u in tl.range(start, end, num_stages=STAGES):
        if ZS_2D:  # zeros and scales loaded in the words' layout (each row pair's copy): cp.async takes them
            rows = u.to(tl.int64) * RU + 2 * tl.arange(0, RU // 2).to(tl.int64)
            at = w_ptr + (rows[:, None] * N + offs_n.to(tl.int64)[None, :])
            g = (u * (8 * RU) // GROUP * N + offs_n)[None, :] + 0 * tl.arange(0, RU // 2)[:, None]
            a, b, z, s = tl.load(at), tl.load(at + N), tl.load(z_ptr + g), tl.load(s_ptr + g)
        else:
            a, b, z, s = _load_unit(w_ptr, z_ptr, s_ptr, u, offs_n, mask_n, N, RU, GROUP, EVEN)
        if PDL and WAIT_IN_LOOP:
            tl.extra.cuda.gdc_wait()  # the pipeliner's prologue (the first units' loads) is before it
        if LOADS_ONLY:
            zs = (z.to(tl.int16, bitcast=True) ^ s.to(tl.int16, bitcast=True)).to(tl.int32)
            if ZS_2D:
                folded ^= a ^ b ^ zs
            else:
                folded ^= a ^ b ^ zs[None, :]
        elif ZS_2D:
            x_at = x_row + u.to(tl.int64) * (8 * RU) + 16 * tl.arange(0, RU // 2).to(tl.int64)
            dots = tl.inline_asm_elementwise(
                _ROW_PAIR_PTX, _CONSTRAINTS, [a, b, z + 1024.0, z + 64.0, tl.broadcast_to(x_at[:, None], a.shape)],
                dtype=tl.float32, is_pure=False, pack=_PACK,
            )  # fmt: skip
            acc += dots * s.to(tl.float32)
        else:
            dots = _unit_dots(a, b, z, x_row, u, RU, True)
            acc += dots * s.to(tl.float32)[None, :]
    if LOADS_ONLY:
        word = tl.reduce(folded, 0, _xor)
        tl.store(count_ptr + offs_n, word, mask=word == 0x12345678)
    else:
        out = tl.sum(acc, axis=0)
        count = count_ptr + row * tl.num_programs(0) + pid_n
        _store_output(
            out, y_ptr + row * stride_ym + offs_n, ws_ptr + row * N + offs_n, count, mask_n, SPLIT_K, FIXUP
        )


@triton.jit
def _xor(a, b):
    return a ^ b


def wave_split(n: int, k: int, block_n: int, per_sm: int, sms: int) -> int:
    """K splits that fill per_sm programs an SM without a second wave (at least one, at most a unit each)."""
    tiles = -(-n // block_n)
    return max(1, min(k // GROUP, per_sm * sms // tiles))


def wave_call(
    x, p, y, ws, counts, block_n, warps, stages, split, wait_in_loop, loads_only=False, zs_2d=False
):
    k, n = p.shape
    grid = (triton.cdiv(n, block_n), x.shape[0], split)
    _wave_kernel[grid](
        x, p.qweight, p.zeros, p.scales, y, ws, counts, n, x.stride(0), y.stride(0),
        GROUP=GROUP, BLOCK_N=block_n, RU=GROUP // 8, UNITS=k // GROUP, SPLIT_K=split, STAGES=stages,
        FIXUP=split > 1, EVEN=n % block_n == 0, PDL=True, WAIT_IN_LOOP=wait_in_loop, LOADS_ONLY=loads_only,
        ZS_2D=zs_2d,
        num_warps=warps, num_stages=stages, launch_pdl=True,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="three tiles, not twelve")
    parser.add_argument(
        "--zs-2d", action="store_true", help="the tiles with zeros and scales in the words' layout"
    )
    args = parser.parse_args()
    copy_gbs = copy_bandwidth()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}")
    print(f"copy bandwidth {copy_gbs:.0f} GB/s (read + write of 1 GiB), {sms} SMs\n")
    print("| shape | kernel | programs | µs | GB/s | % of copy | max error vs AWQLinear's |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, (k, n) in SHAPES.items():
        packs = [kpack(*random_awq(k, n), GROUP, paired=True) for _ in range(weight_copies(k, n))]
        weight = sum(
            t.numel() * t.element_size() for t in (packs[0].qweight, packs[0].zeros, packs[0].scales)
        )

        def row(label: str, programs: int, ms: float, err: str = "") -> None:
            gbs = weight / ms / 1e6
            print(
                f"| {name} | {label} | {programs} | {ms * 1000:.1f} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% | {err} |",
                flush=True,
            )

        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        row("AWQLinear's (streamed kernel)", 0, graph_ms([lambda p=p: awq_matmul(x, p) for p in packs]))
        ref = awq_matmul(x, packs[0]).float()
        y = torch.empty(1, n, dtype=torch.float16, device="cuda")
        tiles = TILES_2D if args.zs_2d else [(*t, False) for t in (QUICK if args.quick else TILES)]
        for block_n, warps, stages, per_sm, in_loop, zs_2d in tiles:
            split = wave_split(n, k, block_n, per_sm, sms)
            ws, counts = split_k_scratch(x.device, n, triton.cdiv(n, block_n))
            programs = triton.cdiv(n, block_n) * split
            label = (
                f"wave: {block_n} columns, {warps} warps, {stages} stages, ~{per_sm}/SM"
                + ("" if in_loop else ", wait before the loop")
                + (", zeros and scales per row pair" if zs_2d else "")
            )
            try:

                def call(p):
                    return wave_call(
                        x, p, y, ws, counts, block_n, warps, stages, split, in_loop, False, zs_2d
                    )

                call(packs[0])
                err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                call(packs[0])  # again: the counters and workspace were left at zero
                err = max(err, ((y.float() - ref).abs().max() / ref.abs().max()).item())
                row(label, programs, graph_ms([lambda p=p: call(p) for p in packs]), f"{err:.1e}")
                if zs_2d or ((block_n, stages, per_sm) in ((256, 6, 1), (256, 4, 2)) and in_loop):
                    folded = torch.zeros(n, dtype=torch.int32, device="cuda")

                    def only(p):
                        return wave_call(
                            x, p, y, ws, folded, block_n, warps, stages, split, True, True, zs_2d
                        )

                    row(
                        label.replace("wave", "loads only"),
                        programs,
                        graph_ms([lambda p=p: only(p) for p in packs]),
                    )
            except Exception as e:  # a tile that does not fit (shared memory) is reported, not fatal
                print(
                    f"| {name} | {label} | {programs} | failed: {str(e).splitlines()[0][:80]} | | | |",
                    flush=True,
                )
        del packs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
