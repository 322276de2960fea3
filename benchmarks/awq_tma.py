"""A one-row dp2a AWQ kernel that streams its weights by TMA into a shared-memory ring, against
awq_x16's split-K kernel, at DeepSeek-LLM-67B's shapes on one GPU (issue 4, check 5):

    python benchmarks/awq_tma.py              (on an sm_90 GPU)
    python benchmarks/awq_tma.py --compile    (compile for sm_90 only, no GPU: registers, shared memory)

Why. With PDL, the one-row kernel's weight loads alone reach 91-96% of the copy bandwidth at qkv and
o (awq-load-ceiling-h200.md), because they are all issued before griddepcontrol.wait; the kernels
that compute hold only a unit or two ahead in registers, and what is loaded after the wait waits
for the call before to finish. Here each program (written in Gluon, Triton's lower-level dialect)
keeps NBUF stages of its weights in flight by TMA into shared memory, all of them issued before the
wait, so the next call's loads run under this call's tail; each program takes `bn` columns over all
of K (or a split of it), so at one split there is no split-K sum at all. The arithmetic is awq_x16's
(x quantized to int16 in blocks of 128 by quantize_x beforehand, not counted; dp2a products).

On an H200 (benchmarks/results/awq-tries-h200-2026-12-04.md) it was correct and slow: o 14.3 µs at
best against awq_x16's 11.6, qkv 16.9 against 13.5; its loads alone 10.0 and 12.3 µs, below the
register loads' 8.2 and 10.3. Two warps a program and one or two programs an SM do not hide the
arithmetic's latency, and the TMA stream itself is no faster than plain loads here. Dropped.

Tensors. A stage is G groups of 128 of K: even and odd word rows [G, 8, bn] int32 (two TMA boxes
over the paired words' even and odd rows), zeros and scales [G, bn] fp16. Each thread holds a
group's 8 row pairs for 4 columns, so a group's integer sums stay in registers; the sum over groups
is done once, at the end.
"""

# ruff: noqa: B023  (every closure here is called within the loop iteration that made it)
from __future__ import annotations

import argparse

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma

from tameshi.kernels.awq_x16 import row_pair_ptx

GROUP_PAIRS = 8  # row pairs of words in a group of 128
PAIRS = gl.constexpr(GROUP_PAIRS)
ROW_PAIR_PTX = gl.constexpr(row_pair_ptx(4))
CONSTRAINTS = gl.constexpr(",".join(["=r"] * 4 + ["r"] * 8 + ["l"] * 4))


@gluon.jit
def _pdl(op: gl.constexpr):
    gl.inline_asm_elementwise(op + "; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _prefetch(at, mask=None):
    if mask is None:
        gl.inline_asm_elementwise(
            "prefetch.global.L1 [$1]; // $0", "=r,l", [at], dtype=gl.int32, is_pure=False, pack=1
        )
    else:
        gl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L1 [$1]; } // $0", "=r,l,r",
            [at, mask.to(gl.int32)], dtype=gl.int32, is_pure=False, pack=1,
        )  # fmt: skip


@gluon.jit
def _issue(wa_desc, wb_desc, z_desc, s_desc, wa_s, wb_s, z_s, s_s, bars, stage, g0, n0,
           G: gl.constexpr, NBUF: gl.constexpr):  # fmt: skip
    slot = stage % NBUF
    bar = bars.index(slot)
    nbytes: gl.constexpr = (
        wa_desc.block_type.nbytes + wb_desc.block_type.nbytes + z_desc.block_type.nbytes
        + s_desc.block_type.nbytes
    )  # fmt: skip
    mbarrier.expect(bar, nbytes)
    g = g0 + stage * G
    tma.async_copy_global_to_shared(wa_desc, [g, 0, n0], bar, wa_s.index(slot))
    tma.async_copy_global_to_shared(wb_desc, [g, 0, n0], bar, wb_s.index(slot))
    tma.async_copy_global_to_shared(z_desc, [g, n0], bar, z_s.index(slot))
    tma.async_copy_global_to_shared(s_desc, [g, n0], bar, s_s.index(slot))


@gluon.jit
def _tma_kernel(
    wa_desc, wb_desc, z_desc, s_desc, q_ptr, xs_ptr, xsum_ptr, y_ptr, ws_ptr, count_ptr,
    BN: gl.constexpr, G: gl.constexpr, STAGES: gl.constexpr, NBUF: gl.constexpr, SPLIT_K: gl.constexpr,
    LOADS_ONLY: gl.constexpr, XLINES: gl.constexpr,
):  # fmt: skip
    """Program (column block, K split): STAGES stages of G groups, NBUF of them in flight."""
    _pdl("griddepcontrol.launch_dependents")
    W: gl.constexpr = gl.num_warps()
    L3: gl.constexpr = gl.BlockedLayout([1, PAIRS, 4], [128 // BN, 1, BN // 4], [W, 1, 1], [2, 1, 0])
    LG: gl.constexpr = gl.SliceLayout(1, L3)  # [G, BN]
    LP: gl.constexpr = gl.SliceLayout(2, L3)  # [G, PAIRS]
    pid_n = gl.program_id(0)
    pid_k = gl.program_id(1)
    n0 = pid_n * BN
    g0 = pid_k * (STAGES * G)

    wa_s = gl.allocate_shared_memory(gl.int32, [NBUF, G, PAIRS, BN], wa_desc.layout)
    wb_s = gl.allocate_shared_memory(gl.int32, [NBUF, G, PAIRS, BN], wb_desc.layout)
    z_s = gl.allocate_shared_memory(gl.float16, [NBUF, G, BN], z_desc.layout)
    s_s = gl.allocate_shared_memory(gl.float16, [NBUF, G, BN], s_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [NBUF, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NBUF):
        mbarrier.init(bars.index(i), count=1)
    for i in gl.static_range(NBUF):  # the weights do not depend on the kernel before: before the wait
        if i < STAGES:
            _issue(wa_desc, wb_desc, z_desc, s_desc, wa_s, wb_s, z_s, s_s, bars, i, g0, n0, G, NBUF)
    _pdl("griddepcontrol.wait")
    # x (int16, 256 bytes a group) and its block scales and sums for all of this program's K: into L1
    # now, so that no stage waits on L2 for them.
    LX: gl.constexpr = gl.BlockedLayout([1], [32], [W], [0])
    lines = gl.arange(0, XLINES, layout=LX)  # 128-byte lines (a power of two at least STAGES * G * 2)
    _prefetch(q_ptr + g0.to(gl.int64) * 128 + lines * 64, lines < STAGES * G * 2)
    _prefetch(xs_ptr + g0 + lines * 32, lines * 32 < STAGES * G)
    _prefetch(xsum_ptr + g0 + lines * 32, lines * 32 < STAGES * G)

    gi = gl.arange(0, G, layout=gl.SliceLayout(1, LP))
    pi = gl.arange(0, PAIRS, layout=gl.SliceLayout(0, LP))
    gq = gl.arange(0, G, layout=gl.SliceLayout(1, LG))
    acc = gl.zeros([G, BN], gl.float32, LG)
    for stage in range(STAGES):
        slot = stage % NBUF
        mbarrier.wait(bars.index(slot), (stage // NBUF) & 1)
        a = wa_s.index(slot).load(L3)
        b = wb_s.index(slot).load(L3)
        z = z_s.index(slot).load(LG)
        s = s_s.index(slot).load(LG)
        gl.thread_barrier()  # every warp has its words: the slot may be refilled
        fence_async_shared()
        if stage + NBUF < STAGES:
            _issue(
                wa_desc, wb_desc, z_desc, s_desc, wa_s, wb_s, z_s, s_s, bars, stage + NBUF, g0, n0, G, NBUF
            )
        g = g0 + stage * G
        if LOADS_ONLY:
            acc += gl.sum(a ^ b, axis=1).to(gl.float32) + z.to(gl.float32) * s.to(gl.float32)
        else:
            pair = (g + gi)[:, None] * PAIRS + pi[None, :]
            x_at = gl.expand_dims(q_ptr + pair.to(gl.int64) * 16, 2)
            x_at, _ = gl.broadcast(x_at, a)
            dots = gl.inline_asm_elementwise(
                ROW_PAIR_PTX, CONSTRAINTS, [a, b, x_at], dtype=gl.int32, is_pure=False, pack=4
            )
            isum = gl.sum(dots, axis=1)
            xsum = gl.load(xsum_ptr + g + gq)
            xs = gl.load(xs_ptr + g + gq)
            exact = isum - z.to(gl.int32) * xsum[:, None]
            acc += exact.to(gl.float32) * (s.to(gl.float32) * xs[:, None])
    for i in gl.static_range(NBUF):
        mbarrier.invalidate(bars.index(i))
    out = gl.sum(acc, axis=0)
    offs = n0 + gl.arange(0, BN, layout=gl.SliceLayout(0, LG))
    if SPLIT_K == 1:
        gl.store(y_ptr + offs, out.to(gl.float16))
    else:  # awq_triton._store_output's fixup: the split that finishes last writes y
        gl.atomic_add(ws_ptr + offs, out, sem="relaxed")
        gl.thread_barrier()
        done = gl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
        if done == SPLIT_K - 1:
            total = gl.load(ws_ptr + offs, cache_modifier=".cg")
            gl.store(y_ptr + offs, total.to(gl.float16))
            gl.store(ws_ptr + offs, gl.zeros_like(total))
            gl.store(count_ptr + pid_n, 0)


def _layouts():
    """The rings' shared layouts: plain rows (no swizzle), as the threads read them 16 bytes at a time."""
    words = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=3)
    halves = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=2)
    return words, halves


def descriptors(packed, bn: int, g: int):
    """TMA descriptors over a KPacked's even and odd word rows [K/128, 8, N], zeros and scales [K/128, N]."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    words, halves = _layouts()
    qw = packed.qweight
    k8, n = qw.shape
    groups = k8 // (2 * GROUP_PAIRS)
    shape, strides = [groups, GROUP_PAIRS, n], [2 * GROUP_PAIRS * n, 2 * n, 1]
    wa = TensorDescriptor(qw, shape, strides, [g, GROUP_PAIRS, bn], words)
    wb = TensorDescriptor(qw[1:], shape, strides, [g, GROUP_PAIRS, bn], words)
    z = TensorDescriptor.from_tensor(packed.zeros, [g, bn], halves)
    s = TensorDescriptor.from_tensor(packed.scales, [g, bn], halves)
    return wa, wb, z, s


def launch(
    prepared, packed, y, ws, counts, descs=None, bn=64, g=4, nbuf=5, split=1, warps=2, loads_only=False
):
    q, xs, xsum = prepared
    k, n = packed.shape
    if packed.group != 128 or k % (128 * g * split) or n % bn or g % warps or (128 // bn) * warps > g:
        raise ValueError(
            f"no TMA tile of {bn} columns, {g} groups a stage, split {split}, {warps} warps at K {k}"
        )
    descs = descs or descriptors(packed, bn, g)
    return _tma_kernel[(n // bn, split)](
        *descs, q, xs, xsum, y, ws, counts, BN=bn, G=g, STAGES=k // 128 // g // split, NBUF=nbuf,
        SPLIT_K=split, LOADS_ONLY=loads_only, XLINES=x_lines(k // split), num_warps=warps, launch_pdl=True,
    )  # fmt: skip


def x_lines(k: int) -> int:
    return triton.next_power_of_2(k // 128 * 2)


TILES = [
    dict(bn=64, g=4, nbuf=5, warps=2),
    dict(bn=64, g=4, nbuf=6, warps=2),
    dict(bn=64, g=4, nbuf=3, warps=2),
    dict(bn=64, g=8, nbuf=3, warps=4),
    dict(bn=64, g=8, nbuf=2, warps=4),
    dict(bn=32, g=8, nbuf=5, warps=2),
    dict(bn=32, g=8, nbuf=3, warps=2),
    dict(bn=128, g=2, nbuf=6, warps=2),
    dict(bn=128, g=4, nbuf=3, warps=4),
    dict(bn=64, g=4, nbuf=5, warps=2, split=2),
    dict(bn=128, g=2, nbuf=5, warps=2, split=2),
]


def compile_only() -> None:
    """Compile each tile for sm_90 without a GPU; print registers and shared memory."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    for tile in TILES:
        for loads_only in (False, True):
            bn, g = tile["bn"], tile["g"]
            words, halves = _layouts()
            sig = {
                "wa_desc": f"tensordesc<i32[{g}, {GROUP_PAIRS}, {bn}],{words!r}>",
                "wb_desc": f"tensordesc<i32[{g}, {GROUP_PAIRS}, {bn}],{words!r}>",
                "z_desc": f"tensordesc<fp16[{g}, {bn}],{halves!r}>",
                "s_desc": f"tensordesc<fp16[{g}, {bn}],{halves!r}>",
                "q_ptr": "*i16", "xs_ptr": "*fp32", "xsum_ptr": "*i32", "y_ptr": "*fp16", "ws_ptr": "*fp32",
                "count_ptr": "*i32",
            }  # fmt: skip
            consts = dict(BN=bn, G=g, STAGES=8192 // 128 // g // tile.get("split", 1), NBUF=tile["nbuf"],
                          SPLIT_K=tile.get("split", 1), LOADS_ONLY=loads_only,
                          XLINES=x_lines(8192 // tile.get("split", 1)))  # fmt: skip
            sig |= dict.fromkeys(consts, "constexpr")
            src = GluonASTSource(_tma_kernel, sig, consts)
            kernel = triton.compile(
                src, target=GPUTarget("cuda", 90, 32),
                options={"num_warps": tile["warps"], "launch_pdl": True},
            )  # fmt: skip
            print(tile, "loads only" if loads_only else "", "shared memory", kernel.metadata.shared)


def main() -> None:
    from awq_kernels import GROUP, SHAPES, OneRowCase, graph_ms, print_run_header, weight_copies
    from awq_slab import random_pack

    from tameshi.kernels.awq_triton import split_k_scratch

    copy_gbs = print_run_header()
    print(OneRowCase.HEADER)
    for name, (k, n) in SHAPES.items():
        packs = [random_pack(k, n, GROUP, "cuda") for _ in range(weight_copies(k, n))]
        case = OneRowCase(name, packs, copy_gbs)
        x, prepared, y, row, error = case.x, case.prepared, case.y, case.row, case.error
        ws, counts = split_k_scratch(x.device, n, n // 16)
        split_k = case.x16_baseline(packs, "awq_x16, split K (x16_config)")
        for tile in TILES:
            for loads_only in (False, True):
                try:
                    descs = [descriptors(p, tile["bn"], tile["g"]) for p in packs]
                    kernel = launch(
                        prepared, packs[0], y, ws, counts, descs[0], loads_only=loads_only, **tile
                    )
                except ValueError:
                    continue
                err = None if loads_only else error()
                ms = graph_ms(
                    [lambda p=p, d=d: launch(prepared, p, y, ws, counts, d, loads_only=loads_only, **tile)
                     for p, d in zip(packs, descs, strict=True)], 50,
                )  # fmt: skip
                label = ("loads only, " if loads_only else "tma: ") + ", ".join(
                    f"{a} {v}" for a, v in tile.items()
                )
                row(label, ms, f"{kernel.n_regs}", err)
        row("awq_x16, split K, again", split_k())
        del packs, case
        torch.cuda.empty_cache()
    print("\nIn a layer: what each adds after the kernels before it (awq_kernels.layer_before)\n")
    for name, (k, n) in SHAPES.items():
        if name.startswith(("qkv", "o ")):
            in_layer(name, k, n, copy_gbs)


def in_layer(name: str, k: int, n: int, copy_gbs: float) -> None:
    from awq_kernels import GROUP, layer_before, make_layer, packed_bytes, random_awq, weight_copies

    from tameshi.kernels.awq_triton import awq_matmul, split_k_scratch
    from tameshi.kernels.awq_x16 import x16_config

    layers = [make_layer(k, n, *random_awq(k, n)) for _ in range(weight_copies(k, n))]
    packs = [layer.kernel_weight for layer in layers]
    weight = packed_bytes(packs[0])
    producer, before = layer_before(name, k, 128)
    chain = range(2 * len(packs))
    base = graph_ms_chain([lambda i=i: producer(i) for i in chain])
    pick = x16_config(n, k, GROUP)
    ws, counts = split_k_scratch(packs[0].qweight.device, n, n // 16)
    y = torch.empty(1, n, dtype=torch.float16, device="cuda")

    def cell(ms: float) -> str:
        return f"{ms * 1000:.1f} µs ({100 * weight / ms / 1e6 / copy_gbs:.0f}%)"

    def x16_step(i):
        x, x_q = producer(i)
        return awq_matmul(x, packs[i % len(packs)], pick, x_q=x_q)

    print(
        f"| {name} | awq_x16 (x16_config) after {before} | {cell(graph_ms_chain([lambda i=i: x16_step(i) for i in chain]) - base)} |"
    )
    for tile in TILES[:4]:
        descs = [descriptors(p, tile["bn"], tile["g"]) for p in packs]

        def step(i, tile=tile, descs=descs):
            _, x_q = producer(i)
            launch(x_q, packs[i % len(packs)], y, ws, counts, descs[i % len(packs)], **tile)

        try:
            step(0)
        except ValueError:
            continue
        label = "tma: " + ", ".join(f"{a} {v}" for a, v in tile.items())
        print(
            f"| {name} | {label} after {before} | {cell(graph_ms_chain([lambda i=i: step(i) for i in chain]) - base)} |",
            flush=True,
        )


def graph_ms_chain(fns):
    from awq_kernels import graph_ms

    return graph_ms(fns, 50)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile", action="store_true", help="compile for sm_90 only (no GPU needed)")
    if parser.parse_args().compile:
        compile_only()
    else:
        main()
