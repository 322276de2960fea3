"""Does the next call's residency hold the dp2a one-row AWQ kernel back? Its tiles at DeepSeek-LLM-67B's
shapes with registers capped (Triton's `maxnreg`), so that more programs fit on an SM (issue 4, check 5):

    python benchmarks/awq_occupancy.py            (on an sm_90 GPU)
    python benchmarks/awq_occupancy.py --compile  (no GPU: registers, spills, programs an SM)

Why. At o, x16_config's tile (256 columns, 2 units a program) takes 108 registers a thread, so 9
programs fit on an SM: its 1,024 programs all fit at once, and the next call's programs (launched
early by PDL) find a slot only as this call's leave, so they cannot load their weights under this
call's tail (its last units' arithmetic and split-K sum). The loads-only kernel, whose programs are
small, reaches 96% with PDL (awq-load-ceiling-h200.md). With 64 registers (ptxas spills nothing, by
--compile) 16 programs fit: both calls' programs at once. If this reading is right, the capped
tiles are faster alone and in a layer; if they are not, residency is not what holds o at 74%.
Against it already: at o the 512-column tile, which leaves almost no slot (528 for its 512 programs),
was the fastest alone (11.2 µs, awq-kernels-h200-2026-12-04.md), and the 128-column one-warp tile,
which leaves 460, was not faster. Not yet run on a GPU (written when no device was lent).

Same timing as benchmarks/awq_kernels.py: µs per call in a CUDA graph over weight copies larger than
L2, with PDL; x quantized beforehand; "in a layer" is what the linear adds after the kernels that come
before it (awq_kernels.layer_before).
"""

# ruff: noqa: B023  (every closure here is called within the loop iteration that made it)
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton

from tameshi.kernels.awq_triton import MatmulConfig
from tameshi.kernels.awq_x16 import _awq_gemv_x16_kernel, x16_config, x16_constants

CAPS = (None, 96, 80, 64)
SIGNATURE = {
    "q_ptr": "*i16", "xs_ptr": "*fp32", "xsum_ptr": "*i32", "w_ptr": "*i32", "z_ptr": "*fp16",
    "s_ptr": "*fp16", "y_ptr": "*fp16", "ws_ptr": "*fp32", "count_ptr": "*i32", "N": "i32", "K": "i32",
    "stride_ym": "i32",
}  # fmt: skip


def tiles(k: int, n: int) -> list[MatmulConfig]:
    """x16_config's pick, and the same widths at 1 and 2 units a program (2 with both loaded ahead)."""
    pick = x16_config(n, k, 128)
    units = k // 128
    out = [pick]
    for bn, per, depth in ((256, 1, 1), (256, 2, 1), (256, 2, 2), (128, 2, 1), (512, 2, 1)):
        cfg = MatmulConfig(1, bn, 128, units // per, bn // 128, 1, fixup=True, x16=True, depth=depth)
        if units % per == 0 and cfg not in out:
            out.append(cfg)
    return out


def launch(prepared, packed, cfg, y, ws, counts, maxnreg):
    q, scales, sums = prepared
    k, n = packed.shape
    consts = x16_constants(cfg, k, packed.group, True, n)
    extra = {} if maxnreg is None else {"maxnreg": maxnreg}
    return _awq_gemv_x16_kernel[(triton.cdiv(n, cfg.block_n), 1, cfg.split_k)](
        q, scales, sums, packed.qweight, packed.zeros, packed.scales, y, ws, counts, n, k, y.stride(0),
        **consts, num_warps=cfg.num_warps, num_stages=1, launch_pdl=True, **extra,
    )  # fmt: skip


def label(cfg: MatmulConfig, k: int, maxnreg) -> str:
    per = k // cfg.block_k // cfg.split_k
    cap = f", at most {maxnreg} registers" if maxnreg else ""
    return f"{cfg.block_n} columns, {per} units a program, {cfg.depth} ahead{cap}"


def resources(kernel) -> tuple[int, int]:
    """A kernel compiled ahead (no GPU): its registers a thread and bytes of local memory (spills), by
    the cuobjdump that ships with Triton."""
    cubin_tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([cubin_tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    return int(re.search(r"REG:(\d+)", usage).group(1)), int(re.search(r"LOCAL:(\d+)", usage).group(1))


def compile_only() -> None:
    """Each tile and cap at o compiled for sm_90: registers, local memory, programs an SM."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    k = n = 8192
    for cfg in tiles(k, n):
        for maxnreg in CAPS:
            consts = x16_constants(cfg, k, 128, True, n)
            sig = SIGNATURE | dict.fromkeys(consts, "constexpr")
            attrs = {
                (i,): [["tt.divisibility", 16]] for i, name in enumerate(sig) if sig[name] != "constexpr"
            }
            options = {"num_warps": cfg.num_warps, "num_stages": 1, "launch_pdl": True}
            if maxnreg:
                options["maxnreg"] = maxnreg
            kernel = triton.compile(
                ASTSource(_awq_gemv_x16_kernel, sig, consts, attrs),
                target=GPUTarget("cuda", 90, 32),
                options=options,
            )
            regs, local = resources(kernel)
            per_sm = min(32, 65536 // ((regs + 7) // 8 * 8 * 32 * cfg.num_warps))
            programs = triton.cdiv(n, cfg.block_n) * cfg.split_k
            print(
                f"o, {label(cfg, k, maxnreg)}: {regs} registers, {local} bytes local, {per_sm} programs an SM "
                f"({per_sm * 132} on 132 SMs) for {programs}"
            )


def main() -> None:
    from awq_kernels import (
        SHAPES,
        graph_ms,
        layer_before,
        make_layer,
        packed_bytes,
        print_run_header,
        random_awq,
        weight_copies,
    )

    from tameshi.kernels.awq_triton import kdequantize_reference, split_k_scratch
    from tameshi.kernels.awq_x16 import quantize_x

    copy_gbs = print_run_header()
    print("| shape | tile | registers | alone µs | added in a layer µs | max error / max abs(y) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, (k, n) in SHAPES.items():
        layers = [make_layer(k, n, *random_awq(k, n)) for _ in range(weight_copies(k, n))]
        packs = [layer.kernel_weight for layer in layers]
        weight = packed_bytes(packs[0])
        in_layer = name.startswith(("qkv", "o "))
        producer = layer_before(name, k, 128)[0] if in_layer else None
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        x[0, 7] = 40.0
        ref = x.float() @ kdequantize_reference(packs[0])
        prepared = quantize_x(x, 128)
        y = torch.empty(1, n, dtype=torch.float16, device="cuda")
        ws, counts = split_k_scratch(x.device, n, n // 128)
        chain = range(2 * len(packs))
        base = graph_ms([lambda i=i: producer(i) for i in chain], 50) if in_layer else 0.0

        def cell(ms: float) -> str:
            return f"{ms * 1000:.2f} ({100 * weight / ms / 1e6 / copy_gbs:.0f}%)"

        for cfg in tiles(k, n):
            for maxnreg in CAPS:
                kernel = launch(prepared, packs[0], cfg, y, ws, counts, maxnreg)
                err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                alone = graph_ms(
                    [lambda p=p: launch(prepared, p, cfg, y, ws, counts, maxnreg) for p in packs], 50
                )
                added = ""
                if in_layer:

                    def step(i):
                        launch(producer(i)[1], packs[i % len(packs)], cfg, y, ws, counts, maxnreg)

                    added = cell(graph_ms([lambda i=i: step(i) for i in chain], 50) - base)
                print(
                    f"| {name} | {label(cfg, k, maxnreg)} | {kernel.n_regs} | {cell(alone)} | {added} | {err:.1e} |",
                    flush=True,
                )
        torch.cuda.empty_cache()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile", action="store_true", help="compile for sm_90 only (no GPU needed)")
    if parser.parse_args().compile:
        compile_only()
    else:
        main()
