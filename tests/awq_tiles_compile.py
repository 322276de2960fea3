"""Compile AWQLinear's default and batch-invariant tiles (both nibble orders of KPacked) and the decode step's other
kernels, with PDL, for an sm_90 GPU on any machine (Triton's own compiler and ptxas, no GPU needed):
a tile Triton cannot compile is found here, not on the first GPU that runs it.

    python tests/awq_tiles_compile.py      (exit status 1 if any fails; run by test_awq_triton.py)

Run without TRITON_INTERPRET, which replaces the kernels by the interpreter's.
"""

from __future__ import annotations

import importlib
import itertools
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile

from tameshi.kernels.awq_gemv import stream_configs
from tameshi.kernels.awq_triton import (
    _awq_dequantize_kernel,
    default_config,
    invariant_config,
    kernel_constants,
)

# (K, N): DeepSeek-LLM 67B and 7B linears, a small model's, and a tensor-parallel rank's of a tiny one
SHAPES = [(8192, 10240), (8192, 8192), (8192, 44032), (22016, 8192), (4096, 12288), (4096, 4096),
          (4096, 22016), (11008, 4096), (576, 1536), (1536, 576), (128, 256), (256, 128)]  # fmt: skip
GROUPS = (32, 64, 128)
ROWS = (1, 4, 64)
INVARIANT_ROWS = (1, 64, 512)  # invariant_config's three tiles (16, 64 and 128 rows)


def signature(kernel, consts: dict, dtype: torch.dtype) -> dict:
    act = "*fp16" if dtype == torch.float16 else "*bf16"
    sig = {"x_ptr": act, "w_ptr": "*i32", "z_ptr": "*fp16", "s_ptr": "*fp16", "y_ptr": "*fp32"}
    sig |= {"ws_ptr": "*fp32", "count_ptr": "*i32"}
    sig |= {name: "i32" for name in (("M", "N") if "M" in kernel.arg_names else ("N",))}
    sig |= {"stride_xm": "i32", "stride_ym": "i32"}
    return sig | {name: "constexpr" for name in consts}


# A job: (kernel, signature, constants, attributes, options, what to call it in a failure)
Job = tuple


def awq_tile_jobs() -> list[Job]:
    """AWQLinear's default and batch-invariant tiles over SHAPES, GROUPS and both nibble orders."""
    jobs, seen = [], set()
    tiles = [(m, False) for m in ROWS] + [(m, True) for m in INVARIANT_ROWS]
    grid = itertools.product(SHAPES, GROUPS, tiles, (torch.float16, torch.bfloat16), (False, True))
    for (k, n), group, (m, invariant), dtype, paired in grid:
        if k % group:
            continue
        cfg = invariant_config(m, n, k, group, dtype) if invariant else default_config(m, n, k, group)
        kernel, consts = kernel_constants(cfg, k, group, dtype, paired, with_pdl=True)
        consts["ASM"] = True  # as on a GPU, where sm_90 launches with PDL
        key = (kernel.__name__, tuple(sorted(consts.items())), cfg.num_warps, cfg.num_stages, dtype)
        if key in seen:
            continue
        seen.add(key)
        sig = signature(kernel, consts, dtype)
        ints = [i for i, name in enumerate(sig) if sig[name] != "constexpr" and name != "M"]
        attrs = {(i,): [["tt.divisibility", 16]] for i in ints}
        options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages, "launch_pdl": "PDL" in consts}
        label = f"K={k} N={n} group={group} M={m} {dtype} paired={paired} invariant={invariant}: {cfg}"
        jobs.append((kernel, sig, consts, attrs, options, label))
    for group, paired, by_word in itertools.product(GROUPS, (False, True), (False, True)):  # dequantize
        block_k = next(b for b in (64, 32, 16, 8) if group % b == 0) if by_word else min(group, 32)
        consts = {"GROUP": group, "BLOCK_N": 128, "BLOCK_K": block_k, "PAIRED": paired, "BY_WORD": by_word}
        sig = {"w_ptr": "*i32", "z_ptr": "*fp16", "s_ptr": "*fp16", "out_ptr": "*fp16", "N": "i32"}
        sig |= {name: "constexpr" for name in consts}
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(5)}
        label = f"dequantize group={group} paired={paired} by_word={by_word}"
        jobs.append((_awq_dequantize_kernel, sig, consts, attrs, {"num_warps": 4}, label))
    return jobs


def compile_one(job: tuple) -> str | None:
    """Compile one job (its kernel named by module and name, to cross processes); the failure, if any."""
    (module, name), sig, consts, attrs, options, label = job
    kernel = getattr(importlib.import_module(module), name)
    try:
        compile(ASTSource(kernel, sig, consts, attrs), target=GPUTarget("cuda", 90, 32), options=options)
    except Exception as e:  # report every kernel that fails, then fail
        return f"{label}: {str(e).splitlines()[0]}"
    return None


def main() -> int:
    jobs = awq_tile_jobs() + stream_tile_jobs() + mma_tile_jobs() + x16_tile_jobs() + decode_kernel_jobs()
    named = [((kernel.fn.__module__, kernel.fn.__name__), *rest) for kernel, *rest in jobs]
    # ptxas takes most of the time, one kernel at a time: one process a core
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        failed = [line for line in pool.map(compile_one, named) if line]
    print(f"{len(jobs)} tiles and the decode step's other kernels compiled for sm_90, {len(failed)} failed")
    for line in failed:
        print(line)
    return 1 if failed else 0


def stream_tile_jobs() -> list[Job]:
    """The streamed one-row kernel's candidate tiles (awq_gemv.stream_configs, which
    benchmarks/awq_stream.py times): each width, unit and depth at group 128 with the fewest units a
    program, the most unrolled one, columns masked at both depths, and group 64 (a 128-row unrolled
    tile takes ptxas several seconds: not all of them)."""
    configs = stream_configs(8192, 128)
    shapes = {(c.block_n, c.block_k, c.depth): c for c in reversed(configs)}  # the fewest units
    picks = [(128, 8192, c) for c in shapes.values()] + [(128, 8192, min(configs, key=lambda c: c.split_k))]
    picks += [(128, 8192 + 128, c) for c in configs if c.block_n == 256 and c.split_k == 16]
    picks += [(64, 8192, stream_configs(8192, 64)[-1])]
    return one_row_jobs(picks, "streamed")


def one_row_jobs(picks: list[tuple[int, int, object]], kind: str) -> list[Job]:
    """Jobs for (group, N, config) picks of the one-row kernels at K 8192, as sm_90 launches them (PDL
    on, their PTX in); the same kernel and constants compile once."""
    jobs, seen = [], set()
    for group, n, cfg in picks:
        kernel, consts = kernel_constants(cfg, 8192, group, torch.float16, True, with_pdl=True, n=n)
        consts["ASM"] = True
        key = (kernel.__name__, tuple(sorted(consts.items())), cfg.num_warps)
        if key in seen:
            continue
        seen.add(key)
        sig = signature(kernel, consts, torch.float16)
        attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(sig) if sig[name] != "constexpr"}
        options = {"num_warps": cfg.num_warps, "num_stages": 1, "launch_pdl": True}
        jobs.append((kernel, sig, consts, attrs, options, f"{kind} group={group} N={n}: {cfg}"))
    return jobs


def mma_tile_jobs() -> list[Job]:
    """The tensor-core one-row kernel's tiles (awq_mma.mma_configs, which benchmarks/awq_stream.py
    times): each width and depth at the fewest and the most blocks a program, groups 64 and 32, and
    the 8-row tile awq_matmul takes for 2-8 rows."""
    from tameshi.kernels.awq_mma import mma_configs
    from tameshi.kernels.awq_triton import rows_config

    shapes: dict[tuple, list] = {}
    for cfg in mma_configs(8192, 128):
        shapes.setdefault((cfg.block_n, cfg.depth), []).append(cfg)
    picks = [
        (128, 8192, pick(same, key=lambda c: c.split_k)) for same in shapes.values() for pick in (min, max)
    ]
    picks += [(group, 8192, mma_configs(8192, group)[-1]) for group in (64, 32)]
    picks += [(128, 8192, rows_config(8192, 128))]
    return one_row_jobs(picks, "tensor-core one-row")


def x16_tile_jobs() -> list[Job]:
    """The dp2a one-row kernel (awq_x16): the tile x16_config picks at each shape and group, each
    width, unit and depth of x16_configs at K 8192 with the fewest units a program, columns masked,
    and quantize_x's kernel for each block size and activation dtype."""
    from tameshi.kernels.awq_x16 import _awq_gemv_x16_kernel, _quantize_x_kernel, x16_config, x16_configs

    picks = [(k, n, group, x16_config(n, k, group)) for k, n in SHAPES for group in GROUPS if k % group == 0]
    fewest = {(c.block_n, c.block_k, c.depth): c for c in reversed(x16_configs(8192, 128))}
    picks += [(8192, 10240, 128, c) for c in fewest.values()] + [
        (8192, 10240 + 128, 128, x16_config(8192, 8192, 128))
    ]
    jobs, seen = [], set()
    for k, n, group, cfg in picks:
        kernel, consts = kernel_constants(cfg, k, group, torch.float16, True, with_pdl=True, n=n)
        assert kernel is _awq_gemv_x16_kernel
        consts["ASM"] = True
        key = tuple(sorted(consts.items()))
        if key in seen:
            continue
        seen.add(key)
        sig = {"q_ptr": "*i16", "xs_ptr": "*fp32", "xsum_ptr": "*i32", "w_ptr": "*i32", "z_ptr": "*fp16"}
        sig |= {"s_ptr": "*fp16", "y_ptr": "*fp16", "ws_ptr": "*fp32", "count_ptr": "*i32"}
        sig |= {"N": "i32", "K": "i32", "stride_ym": "i32"} | dict.fromkeys(consts, "constexpr")
        attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(sig) if sig[name] != "constexpr"}
        options = {"num_warps": cfg.num_warps, "num_stages": 1, "launch_pdl": True}
        jobs.append(
            (_awq_gemv_x16_kernel, sig, consts, attrs, options, f"dp2a K={k} N={n} group={group}: {cfg}")
        )
    for xb, act in itertools.product((32, 64, 128), ("*fp16", "*bf16")):
        consts = {"XB": xb, "BLOCKS": 8, "PDL": True}
        sig = {"x_ptr": act, "q_ptr": "*i16", "scale_ptr": "*fp32", "sum_ptr": "*i32", "stride_xm": "i32"}
        sig |= {"K": "i32"} | dict.fromkeys(consts, "constexpr")
        options = {"num_warps": 4, "launch_pdl": True}
        jobs.append((_quantize_x_kernel, sig, consts, {}, options, f"quantize_x XB={xb} {act}"))
    return jobs


def decode_kernel_jobs() -> list[Job]:
    """The other kernels of a decode step, as sm_90 launches them (PDL on), at the 67B and 7B shapes."""
    from tameshi.kernels import fused, paged_attention

    f16 = "*fp16"
    jobs = []
    x16 = {"q_ptr": "*i16", "qs_ptr": "*fp32", "qsum_ptr": "*i32"}  # awq_x16.QuantizedX's
    norm = {"x_ptr": f16, "delta_ptr": f16, "w_ptr": f16, "sum_ptr": f16, "out_ptr": f16}
    for n in (8192, 4096):
        sig = norm | {"n": "i32", "eps": "fp32"}
        jobs.append((fused._add_rms_norm_kernel, sig, {"HAS_DELTA": True, "BLOCK": n}, 8))
        sig = norm | x16 | {"n": "i32", "eps": "fp32"}  # and the output quantized for the dp2a kernel
        jobs.append(
            (
                fused._add_rms_norm_x16_kernel,
                sig,
                {"HAS_DELTA": True, "BLOCK": n, "CHUNK": 1024, "XB": 128},
                8,
            )
        )
    sig = {"qk_ptr": f16, "cos_ptr": f16, "sin_ptr": f16, "row_stride": "i32"}
    jobs.append((fused._rope_kernel, sig, {"HEAD_DIM": 128, "HALF": 64}, 4))
    jobs.append((fused._silu_mul_kernel, {"gu_ptr": f16, "out_ptr": f16, "n": "i32"}, {"BLOCK": 1024}, 4))
    sig = {"k_ptr": f16, "v_ptr": f16, "slots_ptr": "*i64", "k_cache_ptr": f16, "v_cache_ptr": f16}
    sig |= {"k_stride": "i32", "v_stride": "i32"}
    for size in (1024, 4096):
        jobs.append((fused._store_kv_kernel, sig, {"SIZE": size}, 4))
    for heads, kv_heads in ((64, 8), (32, 32)):
        sig = {"q_ptr": f16, "k_ptr": f16, "v_ptr": f16, "tables_ptr": "*i32", "lens_ptr": "*i64"}
        sig |= {"acc_ptr": "*fp32", "max_ptr": "*fp32", "sum_ptr": "*fp32", "scale": "fp32"}
        sig |= {"stride_table": "i32", "stride_q": "i32"}
        consts = {
            "N_HEADS": heads,
            "N_KV_HEADS": kv_heads,
            "HEAD_DIM": 128,
            "BLOCK_SIZE": 16,
            "GROUP_PAD": 16,
        }
        consts |= {"CHUNK": paged_attention.CHUNK, "SPLITS": paged_attention.SPLITS}
        jobs.append((paged_attention._paged_decode_kernel, sig, consts, 4))
    sig = {"acc_ptr": "*fp32", "max_ptr": "*fp32", "sum_ptr": "*fp32", "lens_ptr": "*i64", "out_ptr": f16}
    sig |= x16
    for quantized in (False, True):
        consts = {"HEAD_DIM": 128, "CHUNK": paged_attention.CHUNK, "SPLITS": paged_attention.SPLITS}
        jobs.append((paged_attention._merge_kernel, sig, consts | {"X16": quantized}, 4))
    out = []
    for kernel, sig, consts, warps in jobs:
        consts = {**consts, "PDL": True}
        sig = sig | dict.fromkeys(consts, "constexpr")
        options = {"num_warps": warps, "launch_pdl": True}
        out.append((kernel, sig, consts, {}, options, f"{kernel.fn.__name__} {consts}"))
    return out


if __name__ == "__main__":
    sys.exit(main())
