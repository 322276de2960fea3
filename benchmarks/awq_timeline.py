"""Where a one-row AWQ call's time goes, program by program: each program of the dp2a kernel stamps
%globaltimer and %clock64 when it starts, when its wait for the previous kernel returns, and when it
has issued its output, over a CUDA graph of calls on rotating weight copies (issue 4, check 5).

    python benchmarks/awq_timeline.py                 (on an sm_90 GPU)
    python benchmarks/awq_timeline.py --compile       (no GPU: the timed kernels compile for sm_90)
    python benchmarks/awq_timeline.py --self-check    (no GPU: the summary on made-up stamps)

Why. At qkv and o one call takes 11-15 µs in a graph where loads alone take 8.2-10.5 (91-96% of the
copy bandwidth, with PDL), and no tile, split-K sum (even none: plain stores), TMA ring, slab layout
or L2 prefetch has closed the gap (awq-split-sum-h200.md, awq-tries-h200-2026-12-04.md). The kernel
has three phases: loads issued before griddepcontrol.wait (the first unit or two of each program),
the wait for the previous call's grid to finish, and after it the x loads, the arithmetic of every
unit, the later units' loads and the split-K sum. Timings of whole calls cannot say which phase holds
the call back; stamps can. Per call (the middle calls of the graph, so each follows one like it):

- *starts*: when its programs start, against the previous call's last program end (negative: PDL
  started them early) and how many started before that end;
- *wait returns*: when the wait let its programs go, against the previous call's last end;
- *after the wait*: how long a program runs from the wait to its last store (median, 90th
  percentile), in µs of the SM's clock;
- *tail*: from the call's 90th-percentile program end to its last;
- *period*: start of one call to the start of the next, which is what a graph of calls pays.

Modes: the kernel as awq_x16 runs it ("x16"), the same with plain stores instead of the split-K sum
("stores"; y is wrong under split K), and its loads with one add a word ("loads"). If the wait
returns well after the previous call's last end, the hand-over between grids is what to shorten; if
the work after the wait is long against the period, the arithmetic and sum after the wait are; if
few programs start early, residency is. Not yet run on a GPU (written when no device was lent).
"""

# ruff: noqa: B023  (every closure here is called within the loop iteration that made it)
from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tameshi.kernels.awq_gemv import _load_unit
from tameshi.kernels.awq_triton import MatmulConfig, _store_output
from tameshi.kernels.awq_x16 import _unit_sums, x16_config, x16_constants

MODES = {"x16": 0, "stores": 1, "loads": 2}
STAMPS = tl.constexpr(7)  # globaltimer at start, wait, end; clock64 at the same three; the SM


@triton.jit
def _stamp():
    """(%globaltimer in ns, %clock64) here; volatile asm, so it stays in order with the wait and the
    barrier around it."""
    t = tl.inline_asm_elementwise(
        "mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1
    )
    c = tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
    return t, c


@triton.jit
def _store_stamp(at, i: tl.constexpr):
    """Stamp i (0 start, 1 wait returned, 2 output issued) of a program: its globaltimer at at[i],
    its clock64 at at[3 + i]."""
    t, c = _stamp()
    tl.store(at + i, t)
    tl.store(at + 3 + i, c)


@triton.jit
def _loads_only(
    acc, words_a, words_b, z, s, q_row, xs_row, xsum_row, unit, RU: tl.constexpr, ASM: tl.constexpr
):
    """A unit's words kept alive by one integer add a word (the "loads" mode), no x."""
    return acc + tl.sum(words_a + words_b, axis=0).to(tl.float32) + z.to(tl.float32) + s.to(tl.float32)


@triton.jit
def _timed_sums(acc, words_a, words_b, z, s, q_row, xs_row, xsum_row, unit, RU: tl.constexpr, ASM: tl.constexpr,
                MODE: tl.constexpr):  # fmt: skip
    if MODE == 2:
        return _loads_only(acc, words_a, words_b, z, s, q_row, xs_row, xsum_row, unit, RU, ASM)
    return _unit_sums(acc, words_a, words_b, z, s, q_row, xs_row, xsum_row, unit, RU, ASM)


@triton.jit
def _timed_x16_kernel(
    q_ptr, xs_ptr, xsum_ptr, w_ptr, z_ptr, s_ptr, y_ptr, ws_ptr, count_ptr, stamp_ptr, N, K, stride_ym,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, RU: tl.constexpr, UNITS: tl.constexpr,
    SPLIT_K: tl.constexpr, DEPTH: tl.constexpr, FIXUP: tl.constexpr, EVEN: tl.constexpr,
    ASM: tl.constexpr, PDL: tl.constexpr, MODE: tl.constexpr,
):  # fmt: skip
    """awq_x16._awq_gemv_x16_kernel for one row, its unit loop (awq_gemv.stream_units) written out so
    that the stamps sit around the wait, each program's stamps at stamp_ptr + STAMPS · program."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(2)
    at = stamp_ptr + (pid_k * tl.num_programs(0) + pid_n).to(tl.int64) * STAMPS
    _store_stamp(at, 0)  # each stored at once: held to the end, they cost 22 registers a thread
    first = pid_k * UNITS
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    a0, b0, z0, s0 = _load_unit(w_ptr, z_ptr, s_ptr, first, offs_n, mask_n, N, RU, GROUP, EVEN)
    if DEPTH == 2:
        a1, b1, z1, s1 = _load_unit(w_ptr, z_ptr, s_ptr, first + 1, offs_n, mask_n, N, RU, GROUP, EVEN)
    if PDL:
        tl.extra.cuda.gdc_wait()
    _store_stamp(at, 1)
    acc = tl.zeros(offs_n.shape, dtype=tl.float32)
    for i in tl.static_range(UNITS - DEPTH):
        a2, b2, z2, s2 = _load_unit(
            w_ptr, z_ptr, s_ptr, first + i + DEPTH, offs_n, mask_n, N, RU, GROUP, EVEN
        )
        acc = _timed_sums(acc, a0, b0, z0, s0, q_ptr, xs_ptr, xsum_ptr, first + i, RU, ASM, MODE)
        if DEPTH == 2:
            a0, b0, z0, s0 = a1, b1, z1, s1
            a1, b1, z1, s1 = a2, b2, z2, s2
        else:
            a0, b0, z0, s0 = a2, b2, z2, s2
    acc = _timed_sums(acc, a0, b0, z0, s0, q_ptr, xs_ptr, xsum_ptr, first + UNITS - DEPTH, RU, ASM, MODE)
    if DEPTH == 2:
        acc = _timed_sums(acc, a1, b1, z1, s1, q_ptr, xs_ptr, xsum_ptr, first + UNITS - 1, RU, ASM, MODE)
    if MODE == 0:
        _store_output(acc, y_ptr + offs_n, ws_ptr + offs_n, count_ptr + pid_n, mask_n, SPLIT_K, FIXUP)
    else:
        tl.store(y_ptr + offs_n, acc.to(y_ptr.dtype.element_ty), mask=mask_n)
    tl.debug_barrier()
    _store_stamp(at, 2)
    sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32, is_pure=False, pack=1)
    tl.store(at + 6, sm.to(tl.int64))


def launch_timed(prepared, packed, cfg: MatmulConfig, y, ws, counts, stamps, mode: str):
    """One timed call (launched with PDL) writing its programs' stamps into `stamps` [programs, STAMPS]."""
    q, scales, sums = prepared
    k, n = packed.shape
    consts = x16_constants(cfg, k, packed.group, True, n)
    return _timed_x16_kernel[(triton.cdiv(n, cfg.block_n), 1, cfg.split_k)](
        q, scales, sums, packed.qweight, packed.zeros, packed.scales, y, ws, counts, stamps, n, k, y.stride(0),
        **consts, MODE=MODES[mode], num_warps=cfg.num_warps, num_stages=1, launch_pdl=True,
    )  # fmt: skip


@dataclass
class CallSummary:
    """One call's stamps, set against the call before it (µs; see the module docstring)."""

    start_vs_prev_end: float  # its first program's start minus the previous call's last end
    early: float  # the share of its programs that started before the previous call's last end
    wait_vs_prev_end: float  # its first wait return minus the previous call's last end
    after_wait: float  # median program, wait return to last store (clock64)
    after_wait_p90: float
    before_wait: float  # median program, start to wait return (clock64)
    tail: float  # its last end minus its 90th-percentile end
    period: float  # its first start minus the previous call's first start


def summarize(stamps: torch.Tensor, cycles_per_ns: float) -> list[CallSummary]:
    """stamps [calls, programs, STAMPS] (int64, on the CPU) in launch order -> one summary per call
    after the first."""
    out = []
    t = stamps[..., :3].double() / 1000.0  # µs
    c = stamps[..., 3:6].double() / (cycles_per_ns * 1000.0)
    for i in range(1, stamps.shape[0]):
        prev_end = t[i - 1, :, 2].max().item()
        starts, waits, ends = t[i, :, 0], t[i, :, 1], t[i, :, 2]
        after = (c[i, :, 2] - c[i, :, 1]).sort().values
        before = (c[i, :, 1] - c[i, :, 0]).sort().values
        n = after.numel()
        out.append(
            CallSummary(
                start_vs_prev_end=starts.min().item() - prev_end,
                early=(starts < prev_end).double().mean().item(),
                wait_vs_prev_end=waits.min().item() - prev_end,
                after_wait=after[n // 2].item(),
                after_wait_p90=after[(9 * n) // 10].item(),
                before_wait=before[n // 2].item(),
                tail=ends.max().item() - ends.sort().values[(9 * n) // 10].item(),
                period=starts.min().item() - t[i - 1, :, 0].min().item(),
            )
        )
    return out


def cycles_per_ns(stamps: torch.Tensor) -> float:
    """The SMs' clock from the stamps themselves: clock64 cycles over globaltimer ns, start to end, over
    programs that ran 2 µs or more (globaltimer may tick coarsely)."""
    ns = (stamps[..., 2] - stamps[..., 0]).flatten().double()
    cycles = (stamps[..., 5] - stamps[..., 3]).flatten().double()
    keep = ns >= 2000
    if not keep.any():
        return 1.98  # H100 / H200 boost clock
    return (cycles[keep].sum() / ns[keep].sum()).item()


def timer_step(stamps: torch.Tensor) -> float:
    """globaltimer's smallest step seen (ns), to judge how far the start/wait/end times can be trusted."""
    values = stamps[..., :3].flatten().unique()
    steps = values[1:] - values[:-1]
    return steps[steps > 0].min().item() if steps.numel() else float("nan")


def row(name: str, label: str, regs: int, err: str, period_graph: float, calls: list[CallSummary]) -> str:
    def med(field: str) -> float:
        return statistics.median(getattr(s, field) for s in calls)

    return (
        f"| {name} | {label} | {regs} | {err} | {period_graph:.2f} | {med('period'):.2f} | {med('start_vs_prev_end'):+.2f} "
        f"| {100 * med('early'):.0f}% | {med('wait_vs_prev_end'):+.2f} | {med('before_wait'):.2f} "
        f"| {med('after_wait'):.2f} / {med('after_wait_p90'):.2f} | {med('tail'):.2f} |"
    )


HEADER = (
    "| shape | tile, mode | registers | max error / max abs(y) | µs a call (graph) | period from stamps | first start − prev. last end "
    "| started early | first wait return − prev. last end | before wait (median) "
    "| after wait (median / p90) | tail (p90 → last end) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def tiles(k: int, n: int) -> list[MatmulConfig]:
    """x16_config's pick, 2 units a program with both loaded ahead, 4 with two ahead, 512 columns."""
    pick = x16_config(n, k, 128)
    units = k // 128
    out = [pick]
    for bn, per, depth in ((256, 2, 2), (256, 4, 2), (512, 2, 1)):
        cfg = MatmulConfig(1, bn, 128, units // per, bn // 128, 1, fixup=True, x16=True, depth=depth)
        if units % per == 0 and cfg not in out:
            out.append(cfg)
    return out


def label(cfg: MatmulConfig, k: int, mode: str) -> str:
    return (
        f"{cfg.block_n} columns, {k // cfg.block_k // cfg.split_k} units a program, {cfg.depth} ahead, {mode}"
    )


def main() -> None:
    from awq_kernels import SHAPES, graph_ms, make_layer, print_run_header, random_awq, weight_copies

    from tameshi.kernels.awq_triton import kdequantize_reference, split_k_scratch
    from tameshi.kernels.awq_x16 import launch_x16, quantize_x

    print_run_header()
    first = True
    for name in ("qkv 8192→10240", "o 8192→8192"):
        k, n = SHAPES[name]
        packs = [make_layer(k, n, *random_awq(k, n)).kernel_weight for _ in range(weight_copies(k, n))]
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        prepared = quantize_x(x, 128)
        ref = x.float() @ kdequantize_reference(packs[0])
        y = torch.empty(1, n, dtype=torch.float16, device="cuda")
        ws, counts = split_k_scratch(x.device, n, n // 128)
        calls = 2 * len(packs)
        for cfg in tiles(k, n):
            programs = triton.cdiv(n, cfg.block_n) * cfg.split_k
            stamps = torch.zeros(calls, programs, STAMPS.value, dtype=torch.int64, device="cuda")
            plain = graph_ms([lambda p=p: launch_x16(x, p, cfg, y, ws, counts, prepared) for p in packs], 50)
            print(f"{name}, {label(cfg, k, 'x16')}, untimed (awq_x16 itself): {plain * 1000:.2f} µs a call")
            for mode in MODES:
                fns = [
                    lambda i=i: launch_timed(
                        prepared, packs[i % len(packs)], cfg, y, ws, counts, stamps[i], mode
                    )
                    for i in range(calls)
                ]
                regs = fns[0]().n_regs  # on the first weight copy: y is its product (in mode x16)
                err = (
                    f"{((y.float() - ref).abs().max() / ref.abs().max()).item():.1e}"
                    if mode == "x16"
                    else "—"
                )
                per_call = graph_ms(fns, 20)  # its last replay leaves the stamps
                got = stamps.cpu()
                clock = cycles_per_ns(got)
                if first:
                    print(
                        f"globaltimer step {timer_step(got):.0f} ns; SM clock {clock:.2f} GHz (from the stamps)\n"
                    )
                    print(HEADER)
                    first = False
                print(
                    row(name, label(cfg, k, mode), regs, err, per_call * 1000, summarize(got, clock)),
                    flush=True,
                )
        torch.cuda.empty_cache()


def self_check() -> None:
    """The summary on made-up stamps whose answers are known: calls every 10 µs, each program 2 µs
    before its wait and 3 after, the wait returning 0.5 µs after the previous call's last end."""
    calls, programs = 4, 10
    stamps = torch.zeros(calls, programs, STAMPS.value, dtype=torch.int64)
    for i in range(calls):
        for p in range(programs):
            start = 10_000 * i + 100 * p - 1_000  # ns; the first program 1 µs before the previous end
            wait = 10_000 * i + 500 + 50 * p  # previous call's last end is at 10_000 * i
            end = wait + 3_000 + (6_000 if p == programs - 1 else 0)  # one straggler
            stamps[i, p, :3] = torch.tensor([start, wait, end])
            stamps[i, p, 3:6] = torch.tensor([start, wait, end]) * 2  # a 2 GHz clock
    stamps[..., 6] = torch.arange(programs)
    clock = cycles_per_ns(stamps)
    assert abs(clock - 2.0) < 1e-9, clock
    # call i - 1 ends last at 10_000 (i - 1) + 500 + 450 + 9_000: call i starts 0.95 µs before that
    # and its wait returns 0.55 µs after it
    for s in summarize(stamps, clock):
        assert abs(s.period - 10.0) < 1e-9, s
        assert abs(s.after_wait - 3.0) < 1e-9 and abs(s.after_wait_p90 - 9.0) < 1e-9, s
        assert abs(s.tail - 0.0) < 1e-9, s  # the straggler is the 90th percentile of 10 as well
        assert abs(s.start_vs_prev_end + 0.95) < 1e-9 and abs(s.wait_vs_prev_end - 0.55) < 1e-9, s
        assert abs(s.early - 1.0) < 1e-9, s
    print("summary self-check passed:", summarize(stamps, clock)[0])


def compile_only() -> None:
    """Each timed tile and mode at o compiled for sm_90 (no GPU): registers and spills."""
    from awq_occupancy import resources
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    k = n = 8192
    sig = {
        "q_ptr": "*i16", "xs_ptr": "*fp32", "xsum_ptr": "*i32", "w_ptr": "*i32", "z_ptr": "*fp16",
        "s_ptr": "*fp16", "y_ptr": "*fp16", "ws_ptr": "*fp32", "count_ptr": "*i32", "stamp_ptr": "*i64",
        "N": "i32", "K": "i32", "stride_ym": "i32",
    }  # fmt: skip
    for cfg in tiles(k, n):
        for mode, value in MODES.items():
            consts = x16_constants(cfg, k, 128, True, n) | {"ASM": True, "MODE": value}
            full = sig | dict.fromkeys(consts, "constexpr")
            attrs = {
                (i,): [["tt.divisibility", 16]] for i, name in enumerate(full) if full[name] != "constexpr"
            }
            options = {"num_warps": cfg.num_warps, "num_stages": 1, "launch_pdl": True}
            kernel = triton.compile(
                ASTSource(_timed_x16_kernel, full, consts, attrs),
                target=GPUTarget("cuda", 90, 32),
                options=options,
            )
            regs, local = resources(kernel)
            print(f"o, {label(cfg, k, mode)}: {regs} registers, {local} bytes local")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile", action="store_true", help="compile for sm_90 only (no GPU needed)")
    parser.add_argument("--self-check", action="store_true", help="the summary on made-up stamps (no GPU)")
    args = parser.parse_args()
    if args.compile:
        compile_only()
    elif args.self_check:
        self_check()
    else:
        main()
