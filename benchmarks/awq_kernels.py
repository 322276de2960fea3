"""AWQ 4-bit matmul kernels at DeepSeek-LLM-67B's layer shapes, side by side, on one GPU.

    python benchmarks/awq_kernels.py [--sweep | --invariant] [--rows 1,4] [--out benchmarks/results/awq-kernels-h100.md]

For each shape and row count M it times:
  tameshi convert   tameshi.kernels.awq_triton.awq_matmul (dequantization fused, split K for decode),
                    the default tiles with codes turned into floats by int-to-float conversions
  tameshi magic     the same tiles with codes turned into floats by exponent bits, not conversions
                    (MatmulConfig.magic; the tensor-core path only for fp16); at one row, products
                    in fp32 (half2 off: the one-row default before packed fp16 products)
  tameshi deq+mm    awq_dequantize to fp16, then cuBLAS
  tameshi auto      what AWQLinear runs for that M
  torch int4pack    torch's tinygemm (`_weight_int4pack_mm`, bf16, same group size)
  AutoAWQ triton    what AutoAWQ's WQLinear_GEMM runs: its Triton GEMM (split_k 8), or its
                    dequantize + matmul once M·K >= 1024. Loaded from the AutoAWQ wheel's file
                    (awq/modules/triton/gemm.py), so its package's import-time checks don't apply.
Times are per call inside a CUDA graph, the way decode runs (launch overhead is not the kernel's),
with calls rotating over copies of the weight so none is served from L2. Effective bandwidth counts
the bytes tameshi's kernels read for the weight (packed codes, fp16 zeros and scales); it is compared
with a device-to-device copy measured in the same run.

A second table takes one row as the decode step runs it (`decode_rows`): qkv and o on x that arrives
quantized for the dp2a kernel (AWQLinear.forward's `x_q`, written in the step by the norm and the
attention merge), gate_up and down on fp16 x. It gives each kernel alone in a graph of its own calls,
and what it adds to a graph where each call follows the kernels before it in a layer of the 67B
(`layer_before`: the matmul before it and the norm, attention or SwiGLU between, on their own weight
copies): the chain's time less theirs alone, what benchmarks/profile_decode.py counts in a step.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from pathlib import Path

import torch
import triton
import triton.testing

from tameshi.kernels import fused
from tameshi.kernels.awq_triton import (
    MatmulConfig,
    awq_dequantize,
    awq_matmul,
    default_config,
    invariant_config,
    kdequantize_reference,
    kpack,
    split_k_scratch,
)
from tameshi.kernels.awq_x16 import launch_x16, quantize_x, x16_config, x16_configs
from tameshi.kernels.paged_attention import paged_decode_attention_x16
from tameshi.loading.awq import AWQConfig
from tameshi.model.linear import AWQLinear

SHAPES = {  # name: (K, N) of DeepSeek-LLM-67B's linears
    "qkv 8192→10240": (8192, 10240),
    "o 8192→8192": (8192, 8192),
    "gate_up 8192→44032": (8192, 44032),
    "down 22016→8192": (22016, 8192),
}
SHAPES_7B = {  # DeepSeek-LLM-7B's (no grouped KV heads)
    "7B qkv 4096→12288": (4096, 12288),
    "7B o 4096→4096": (4096, 4096),
    "7B gate_up 4096→22016": (4096, 22016),
    "7B down 11008→4096": (11008, 4096),
}
ROWS = (1, 4, 16, 64, 512)
INVARIANT_ROWS = (1, 4, 16, 32, 64, 512, 2048)
GROUP = 128


def bench_ms(fn, rep: int = 200) -> float:
    """Per call, as launched from Python (CUDA events; L2 flushed before each call)."""
    return triton.testing.do_bench(fn, warmup=20, rep=rep, return_mode="median")


def graph_ms(fns, replays: int = 20) -> float:
    """Per call inside a CUDA graph, as decode runs: launch overhead out. `fns` are the same call on
    different copies of the weight (over 2x the 50 MB L2 together), so no call finds its weight cached."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fns:  # compile and warm up outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays / len(fns)


def copy_bandwidth() -> float:
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() / ms / 1e6  # GB/s: read + write


def print_run_header() -> float:
    """Measure the copy bandwidth and print the lines the one-row tries start with (device, versions,
    that bandwidth); returns it, in GB/s."""
    copy_gbs = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}")
    print(f"copy bandwidth {copy_gbs:.0f} GB/s (read + write of 1 GiB)\n")
    return copy_gbs


def weight_copies(k: int, n: int) -> int:
    """How many copies of a [K, N] 4-bit weight to rotate over: more than twice the 50 MB L2 together,
    so that no call finds its weight cached."""
    return max(2, -(-120 * 2**20 // (k * n // 2)))


def packed_bytes(packed) -> int:
    """The bytes tameshi's kernels read for a weight (a KPacked): codes, fp16 zeros and fp16 scales."""
    return sum(t.numel() * t.element_size() for t in (packed.qweight, packed.zeros, packed.scales))


class OneRowCase:
    """One shape of the one-row dp2a tries (awq_l2_prefetch.py, awq_slab.py, awq_tma.py): x with an
    outlier, as real activations have, its fp32 product with the first weight copy, x quantized in
    blocks of 128, an output row; that table's rows; and the baseline they are set against."""

    HEADER = "| shape | kernel | registers | µs | % of copy | max error / max abs(y) |\n|---|---|---:|---:|---:|---:|"

    def __init__(self, name: str, packs: list, copy_gbs: float) -> None:
        k, n = packs[0].shape
        self.name, self.copy_gbs, self.weight = name, copy_gbs, packed_bytes(packs[0])
        self.x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        self.x[0, 7] = 40.0
        self.ref = self.x.float() @ kdequantize_reference(packs[0])
        self.prepared = quantize_x(self.x, 128)
        self.y = torch.empty(1, n, dtype=torch.float16, device="cuda")

    def error(self) -> float:
        """y's largest difference from the reference, over the reference's largest |value|."""
        return ((self.y.float() - self.ref).abs().max() / self.ref.abs().max()).item()

    def row(self, label: str, ms: float, regs: str = "", err: float | None = None) -> None:
        e = "" if err is None else f"{err:.1e}"
        pct = 100 * self.weight / ms / 1e6 / self.copy_gbs
        print(f"| {self.name} | {label} | {regs} | {ms * 1000:.2f} | {pct:.0f}% | {e} |", flush=True)

    def x16_baseline(self, packs: list, label: str, replays: int = 50):
        """awq_x16 on x16_config's tile over the weight copies: a warm-up graph (the first graph of a
        shape ran slower), y's error on the first copy, then its row; returns the timing, to run again."""
        k, n = packs[0].shape
        pick = x16_config(n, k, GROUP)
        ws, counts = split_k_scratch(self.x.device, n, n // 16)

        def timed() -> float:
            calls = [
                lambda p=p: launch_x16(self.x, p, pick, self.y, ws, counts, self.prepared) for p in packs
            ]
            return graph_ms(calls, replays)

        timed()
        launch_x16(self.x, packs[0], pick, self.y, ws, counts, self.prepared)
        err = self.error()  # before the timing, whose replays leave the last weight copy's y
        self.row(label, timed(), "", err)
        return timed


def random_awq(k: int, n: int):
    qweight = torch.randint(-(2**31), 2**31 - 1, (k, n // 8), dtype=torch.int32, device="cuda")
    qzeros = torch.randint(-(2**31), 2**31 - 1, (k // GROUP, n // 8), dtype=torch.int32, device="cuda")
    scales = (torch.rand(k // GROUP, n, device="cuda") * 0.01 + 0.001).half()
    return qweight, qzeros, scales


def load_autoawq():
    spec = importlib.util.find_spec("awq")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "modules" / "triton" / "gemm.py"
    mod_spec = importlib.util.spec_from_file_location("autoawq_triton_gemm", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def tinygemm(k: int, n: int):
    """torch's int4 tinygemm on random codes of the same shape and group size; None if unsupported."""
    try:
        codes = torch.randint(0, 16, (n, k), dtype=torch.int32, device="cuda")
        packed = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
        w = torch.ops.aten._convert_weight_to_int4pack(packed, 8)
        sz = torch.rand(k // GROUP, n, 2, device="cuda").to(torch.bfloat16)
        return lambda x: torch.ops.aten._weight_int4pack_mm(x, w, GROUP, sz)
    except (RuntimeError, AttributeError) as e:
        print(f"torch int4pack unavailable: {e}", file=sys.stderr)
        return None


def sweep_configs(m: int, k: int):
    """Tiles to try at m rows and K = k. The non-magic tiles of more than one row were swept before
    (benchmarks/results/awq-sweep-h100.md), and the one-row kernel's fp32 products on 2026-12-01
    (awq-sweep-h200.md: whole split, 64 columns, 2 blocks per program, two warps)."""
    if m == 1:  # packed fp16 products, one-launch split K: widths, blocks per program, warps
        blocks = k // 128
        return [
            MatmulConfig(1, n, 128, blocks // per, w, by_word=True, magic=True, whole_split=True, fixup=True, half2=True)
            for n in (64, 128, 256) for per in (1, 2, 4) for w in (2, 4, 8)
            if blocks % per == 0 and n * per <= 512
        ]  # fmt: skip
    # More rows: the fp16 tile (pairs, scaled) as y^T = W x^T (swap), the weights the dot's first
    # operand. The tiles without swap were swept on 2026-12-01 (awq-sweep-h200.md): at 4-16 rows the
    # codes-to-floats tile with 128 columns, 8 warps, one block per program won; at 17-64 rows the
    # fp16 tile at 4 warps, over widths, splits and stages.
    blocks = k // 128
    if m <= 16:  # few rows stream the weights: K split so that a program has 1-8 blocks
        rows, splits = 16, {blocks // per for per in (1, 2, 4, 8) if blocks % per == 0}
    else:
        rows, splits = 64, {split for split in (1, 2, 4) if blocks % split == 0}
    return [
        MatmulConfig(rows, n, 128, split, 4, stages, pairs=True, scaled=True, swap=True)
        for n in (64, 128) for split in sorted(splits) for stages in (2, 3)
    ]  # fmt: skip


def sweep(x, packs) -> tuple[MatmulConfig | None, float]:
    best: tuple[MatmulConfig | None, float] = (None, float("inf"))
    for cfg in sweep_configs(x.shape[0], x.shape[1]):
        if x.shape[1] % (cfg.block_k * cfg.split_k):
            continue
        try:
            ms = graph_ms([lambda p=p, cfg=cfg: awq_matmul(x, p, cfg) for p in packs], replays=5)
        except Exception:  # a tile that does not fit shared memory or registers
            torch.cuda.synchronize()
            continue
        if ms < best[1]:
            best = (cfg, ms)
    return best


def make_layer(k: int, n: int, qweight, qzeros, scales) -> AWQLinear:
    """The layer the model runs, around these tensors (repacked for the kernels, as at load)."""
    with torch.device("meta"):
        layer = AWQLinear(k, [n], AWQConfig.from_dict({"group_size": GROUP}))
    layer.qweight, layer.qzeros, layer.scales = qweight, qzeros, scales
    layer.repack_for_kernels()
    return layer


def bench_shape(name: str, k: int, n: int, copy_gbs: float, autoawq, row_counts=ROWS) -> list[str]:
    copies = []
    for _ in range(weight_copies(k, n)):
        qweight, qzeros, scales = random_awq(k, n)
        layer = make_layer(k, n, qweight, qzeros, scales)
        copies.append((layer, qweight, qzeros, scales, tinygemm(k, n)))
    packed = copies[0][0].kernel_weight
    # the bytes our kernels read for the weight: codes, fp16 zeros and fp16 scales
    weight_bytes = packed_bytes(packed)
    rows = []
    for m in row_counts:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        xb = x.bfloat16()
        magic = dataclasses.replace(default_config(m, n, k, GROUP), magic=True, half2=False)
        convert = dataclasses.replace(magic, magic=False)
        t = {
            "auto": graph_ms([lambda c=c: c[0](x) for c in copies]),  # noqa: B023
            "eager": bench_ms(lambda: copies[0][0](x)),  # noqa: B023
            "convert": graph_ms([lambda c=c: awq_matmul(x, c[0].kernel_weight, convert) for c in copies]),  # noqa: B023
            "magic": graph_ms([lambda c=c: awq_matmul(x, c[0].kernel_weight, magic) for c in copies]),  # noqa: B023
            "deq": graph_ms([lambda c=c: x @ awq_dequantize(c[0].kernel_weight, x.dtype) for c in copies]),  # noqa: B023
            "tiny": graph_ms([lambda c=c: c[4](xb) for c in copies]) if copies[0][4] else float("nan"),  # noqa: B023
            "awq": float("nan"),
        }
        if autoawq is not None:
            if m * k >= 1024:  # WQLinear_GEMM's own switch
                fns = [lambda c=c: x @ autoawq.awq_dequantize_triton(c[1], c[3], c[2]) for c in copies]  # noqa: B023
            else:
                fns = [lambda c=c: autoawq.awq_gemm_triton(x, c[1], c[3], c[2], 8) for c in copies]  # noqa: B023
            t["awq"] = graph_ms(fns)
        gbs = weight_bytes / t["auto"] / 1e6
        us = {key: f"{v * 1000:.1f}" for key, v in t.items()}
        rows.append(
            f"| {name} | {m} | {us['auto']} | {us['convert']} | {us['magic']} | {us['deq']} | {us['tiny']} | {us['awq']} "
            f"| {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% | {t['awq'] / t['auto']:.1f}× | {us['eager']} |"
        )
        print(rows[-1], flush=True)
    return rows


def sweep_shape(
    name: str, k: int, n: int, rows_to_sweep: list[int], grid: bool = True, paired_grid: bool = False
) -> list[str]:
    """The sweep's best tile, and the default's time on either nibble order (KPacked.paired). The
    grid runs on AWQLinear's order, or with `paired_grid` on the paired one."""
    packs, paired, nibbles = [], [], []
    for _ in range(weight_copies(k, n)):
        checkpoint = random_awq(k, n)
        packs.append(make_layer(k, n, *checkpoint).kernel_weight)
        paired.append(kpack(*checkpoint, GROUP, paired=True))
        nibbles.append(kpack(*checkpoint, GROUP, paired=False))
    packed = packs[0]
    weight_bytes = packed_bytes(packed)
    rows = []
    for m in rows_to_sweep:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        cfg, ms = sweep(x, paired if paired_grid else packs) if grid else (None, float("inf"))
        default_ms = graph_ms([lambda p=p: awq_matmul(x, p) for p in nibbles])  # noqa: B023
        paired_ms = graph_ms([lambda p=p: awq_matmul(x, p) for p in paired])  # noqa: B023
        deq_ms = graph_ms([lambda p=p: x @ awq_dequantize(p, x.dtype) for p in packs])  # noqa: B023
        word_ms = graph_ms([lambda p=p: x @ awq_dequantize(p, x.dtype, by_word=True) for p in packs])  # noqa: B023
        rows.append(
            f"| {name} | {m} | {cfg} | {ms * 1000:.1f} | {weight_bytes / ms / 1e6:.0f} "
            f"| {default_ms * 1000:.1f} | {paired_ms * 1000:.1f} | {deq_ms * 1000:.1f} | {word_ms * 1000:.1f} |"
        )
        print(rows[-1], flush=True)
    return rows


def invariant_shape(name: str, k: int, n: int) -> list[str]:
    """AWQLinear batch-invariant (EngineConfig.batch_invariant) beside its default, per row count."""
    layers = []
    for _ in range(weight_copies(k, n)):
        layers.append(make_layer(k, n, *random_awq(k, n)))
    rows = []
    for m in INVARIANT_ROWS:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        t = {}
        for mode in (False, True):
            for layer in layers:
                layer.batch_invariant = mode
            t[mode] = graph_ms([lambda layer=layer: layer(x) for layer in layers])  # noqa: B023
        config = invariant_config(m, n, k, GROUP, x.dtype)
        tile = f"{config.block_m} rows, split {config.split_k}"
        rows.append(
            f"| {name} | {m} | {t[False] * 1000:.1f} | {t[True] * 1000:.1f} | {t[True] / t[False]:.2f}× | {tile} |"
        )
        print(rows[-1], flush=True)
    return rows


def invariant_prefill_sweep(name: str, k: int, n: int) -> list[str]:
    """Wider batch-invariant tiles for prefill rows: time, and whether each row equals, bit for bit,
    what the 64-row invariant tile gives it (the tile's rows and columns may change with M, its K
    blocks and split may not)."""
    layers = [make_layer(k, n, *random_awq(k, n)) for _ in range(weight_copies(k, n))]
    packs = [layer.kernel_weight for layer in layers]
    rows = []
    for m in (512, 2048):
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        base = invariant_config(m, n, k, GROUP, x.dtype)
        want = awq_matmul(x[:64], packs[0], invariant_config(64, n, k, GROUP, x.dtype))
        for block_m, block_n, warps, stages in [
            (128, 64, 4, 3), (128, 128, 4, 3), (128, 128, 8, 3), (256, 64, 8, 3), (256, 128, 8, 2), (64, 128, 4, 3)
        ]:  # fmt: skip
            cfg = dataclasses.replace(
                base, block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages
            )
            try:
                same = torch.equal(awq_matmul(x, packs[0], cfg)[:64], want)
                ms = graph_ms([lambda p=p, cfg=cfg: awq_matmul(x, p, cfg) for p in packs])  # noqa: B023
            except Exception as e:  # a tile that does not compile or fit: say so, go on
                rows.append(
                    f"| {name} | {m} | {block_m}×{block_n}, {warps} warps, {stages} stages | failed: {str(e)[:60]} | | |"
                )
                print(rows[-1], flush=True)
                continue
            deq = float("nan")
            if (block_m, block_n, warps) == (128, 64, 4):  # once per M: what AWQLinear runs by default
                deq = graph_ms([lambda layer=layer: layer(x) for layer in layers])  # noqa: B023
            rows.append(
                f"| {name} | {m} | {block_m}×{block_n}, {warps} warps, {stages} stages | {ms * 1000:.1f} | {same} | {deq * 1000:.1f} |"
            )
            print(rows[-1], flush=True)
    return rows


def layer_before(name: str, k: int, block: int | None):
    """The kernels before this linear in a decode layer of the 67B, as producer(i) -> (x, x_q) that
    runs them (the matmul among them on weight copy i, so no call finds it in L2) and writes this
    linear's x; and what they are. qkv: down, then the norm (quantizing x in `block`s); o: paged
    attention over 128 tokens and its merge (quantizing by head); gate_up: o, then the norm; down:
    gate_up, then SwiGLU."""
    h = torch.randn(1, k, device="cuda", dtype=torch.float16)  # the residual stream
    norm_weight = torch.rand(k, device="cuda", dtype=torch.float16) + 0.5
    if name.startswith("o "):
        heads, kv_heads, dim, context, block_size = 64, 8, 128, 128, 16
        q = torch.randn(1, heads, dim, device="cuda", dtype=torch.float16)
        k_cache, v_cache = torch.randn(2, context, kv_heads, dim, device="cuda", dtype=torch.float16)
        tables = torch.arange(context // block_size, device="cuda", dtype=torch.int32)[None]
        lens = torch.tensor([context], device="cuda", dtype=torch.int32)

        def attend(i):
            out, x_q = paged_decode_attention_x16(q, k_cache, v_cache, tables, lens, block_size)
            return out.reshape(1, heads * dim), x_q

        return attend, "paged attention (128 tokens) and its merge"
    before = {
        "qkv": SHAPES["down 22016→8192"],
        "gate_up": SHAPES["o 8192→8192"],
        "down": SHAPES["gate_up 8192→44032"],
    }
    pk, pn = before[name.split()[0]]
    prev = [make_layer(pk, pn, *random_awq(pk, pn)) for _ in range(weight_copies(pk, pn))]
    x_prev = torch.randn(1, pk, device="cuda", dtype=torch.float16)
    if name.startswith("qkv"):
        return (
            lambda i: fused.add_rms_norm_x16(h, prev[i % len(prev)](x_prev), norm_weight, 1e-6, block)[1:],
            "down, then the RMSNorm",
        )
    if name.startswith("gate_up"):
        x_prev_q = quantize_x(x_prev, prev[0].x16_block(x_prev))  # o's x, as the merge writes it
        return (
            lambda i: (
                fused.add_rms_norm(h, prev[i % len(prev)](x_prev, x_prev_q), norm_weight, 1e-6)[1],
                None,
            ),
            "o, then the RMSNorm",
        )
    return lambda i: (fused.silu_mul(prev[i % len(prev)](x_prev)), None), "gate_up, then SwiGLU"


def decode_rows(name: str, k: int, n: int, copy_gbs: float) -> list[str]:
    """One row as the decode step runs each linear (the module docstring): alone, and after the
    kernels before it in a layer (layer_before). qkv and o take x quantized for the dp2a kernel."""
    layers = [make_layer(k, n, *random_awq(k, n)) for _ in range(weight_copies(k, n))]
    packed = layers[0].kernel_weight
    weight_bytes = packed_bytes(packed)
    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
    block = layers[0].x16_block(x) if name.startswith(("qkv", "o ")) else None
    what = f"dp2a on x quantized by its producer (blocks of {block})" if block else "streamed fp16"
    producer, before = layer_before(name, k, block)
    x, x_q = producer(0)
    alone = graph_ms([lambda layer=layer: layer(x, x_q) for layer in layers])
    chain = range(2 * len(layers))  # every weight copy of both, in turn
    both = graph_ms([lambda i=i: layers[i % len(layers)](*producer(i)) for i in chain])
    added = both - graph_ms([lambda i=i: producer(i) for i in chain])

    def cell(ms: float) -> str:
        return f"{ms * 1000:.1f} ({100 * weight_bytes / ms / 1e6 / copy_gbs:.0f}%)"

    row = f"| {name} | {what} | {cell(alone)} | {before} | {cell(added)} | {both * 1000:.1f} |"
    print(row, flush=True)
    return [row]


def decode_sweep(name: str, k: int, n: int, copy_gbs: float) -> list[str]:
    """qkv and o: each dp2a tile on x in blocks of 128 (awq_x16.x16_configs), alone and as added
    after the kernels before it in a layer (as decode_rows), x16_config's pick marked."""
    if not name.startswith(("qkv", "o ")):
        return []
    layers = [make_layer(k, n, *random_awq(k, n)) for _ in range(weight_copies(k, n))]
    packs = [layer.kernel_weight for layer in layers]
    weight_bytes = packed_bytes(packs[0])
    producer, before = layer_before(name, k, 128)
    x, x_q = producer(0)
    chain = range(2 * len(packs))
    base = graph_ms([lambda i=i: producer(i) for i in chain])
    pick = x16_config(n, k, GROUP)

    def chained(i: int, cfg: MatmulConfig) -> torch.Tensor:
        x, x_q = producer(i)
        return awq_matmul(x, packs[i % len(packs)], cfg, x_q=x_q)

    def cell(ms: float) -> str:
        return f"{ms * 1000:.1f} ({100 * weight_bytes / ms / 1e6 / copy_gbs:.0f}%)"

    rows = []
    for cfg in [c for c in x16_configs(k, GROUP) if c.block_k == 128]:
        alone = graph_ms([lambda p=p, cfg=cfg: awq_matmul(x, p, cfg, x_q=x_q) for p in packs])
        added = graph_ms([lambda i=i, cfg=cfg: chained(i, cfg) for i in chain]) - base
        tile = f"{cfg.block_n} columns, {k // cfg.block_k // cfg.split_k} units a program, {cfg.depth} ahead"
        mark = " (x16_config)" if cfg == pick else ""
        rows.append(f"| {name} | {tile}{mark} | {cell(alone)} | {before} | {cell(added)} |")
        print(rows[-1], flush=True)
    return rows


def over_shapes(table) -> list[str]:
    """table(name, k, n) for each 67B shape, the GPU's cache emptied after each."""
    lines = []
    for name, (k, n) in SHAPES.items():
        lines += table(name, k, n)
        torch.cuda.empty_cache()
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true", help="search tile configs instead (qkv and down shapes)")
    ap.add_argument("--sweep-rows", type=lambda t: [int(v) for v in t.split(",")], default=[1, 16, 64])
    ap.add_argument("--sweep-all-shapes", action="store_true", help="sweep o and gate_up too")
    ap.add_argument("--shapes", choices=["67b", "7b"], default="67b", help="whose linears")
    ap.add_argument("--defaults-only", action="store_true", help="with --sweep: time the defaults, no grid")
    ap.add_argument("--paired", action="store_true", help="with --sweep: the grid on paired nibbles")
    ap.add_argument("--invariant", action="store_true", help="batch-invariant tiles beside the defaults")
    ap.add_argument("--invariant-prefill", action="store_true", help="wider invariant tiles for prefill rows")
    ap.add_argument("--rows", type=lambda t: [int(v) for v in t.split(",")], default=list(ROWS))
    ap.add_argument("--decode-only", action="store_true", help="only the table of one row as decode runs it")
    ap.add_argument(
        "--decode-sweep", action="store_true", help="with it, qkv's and o's dp2a tiles in a layer"
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    copy_gbs = copy_bandwidth()
    autoawq = load_autoawq()
    lines = [
        f"# AWQ 4-bit matmul, DeepSeek-LLM-67B shapes, group {GROUP}, fp16 activations",
        "",
        f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}. "
        f"Measured copy bandwidth: **{copy_gbs:.0f} GB/s** (read + write of 1 GiB).",
        "Time in µs per call inside a CUDA graph (as decode runs; calls rotate over copies of the weight "
        "larger than L2 together), effective weight bandwidth in GB/s and % of the copy bandwidth. "
        "The last column is tameshi's call launched from Python (CUDA events, L2 flushed), launch overhead included.",
        "",
        "| shape | M | tameshi auto | tameshi convert | tameshi magic | tameshi deq+mm | torch int4pack "
        "| AutoAWQ triton | auto GB/s | auto % copy | auto vs AutoAWQ | auto, eager |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if args.invariant_prefill:
        lines = [
            "| shape | M | tile (rows × columns) | µs | rows equal the 64-row tile's | default (deq + cuBLAS) µs |",
            "|---|---:|---|---:|---|---:|",
        ]
        lines += over_shapes(invariant_prefill_sweep)
    elif args.invariant:
        lines = [
            f"Batch-invariant AWQLinear (`invariant_config`) beside the default, {torch.cuda.get_device_name()}, "
            "µs per call inside a CUDA graph",
            "",
            "| shape | M | default µs | invariant µs | invariant / default | invariant tile |",
            "|---|---:|---:|---:|---:|---|",
        ]
        lines += over_shapes(invariant_shape)
    elif args.sweep:
        lines = [
            "| shape | M | best config | µs | GB/s | default µs, nibbles in order | default µs, paired nibbles | deq+mm µs "
            "| deq by word + mm µs |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        shapes = SHAPES_7B if args.shapes == "7b" else SHAPES
        for name in shapes if args.sweep_all_shapes else list(shapes)[::3]:  # qkv and down
            lines += sweep_shape(
                name, *shapes[name], args.sweep_rows, grid=not args.defaults_only, paired_grid=args.paired
            )
            torch.cuda.empty_cache()
    else:
        if not args.decode_only:
            lines += over_shapes(lambda name, k, n: bench_shape(name, k, n, copy_gbs, autoawq, args.rows))
        lines += [
            "",
            "One row as the decode step runs it: µs per call (% of the copy bandwidth), the kernel alone in a "
            "graph of its own calls, and what it adds to a graph where each call follows the kernels before it "
            "in a layer (the chain's time less that of the kernels before alone).",
            "",
            "| shape | what decode runs | alone | kernels before it | added after them | they + it |",
            "|---|---|---:|---|---:|---:|",
        ]
        lines += over_shapes(lambda name, k, n: decode_rows(name, k, n, copy_gbs))
        if args.decode_sweep:
            lines += [
                "",
                "The dp2a tiles at qkv and o, alone and in a layer (as above), x in blocks of 128.",
                "",
                "| shape | tile | alone | kernels before it | added after them |",
                "|---|---|---:|---|---:|",
            ]
            lines += over_shapes(lambda name, k, n: decode_sweep(name, k, n, copy_gbs))
    emit(lines, args.out)


def emit(lines: list[str], out: Path | None) -> None:
    """Print the report, and write it to `out` where one is given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


if __name__ == "__main__":
    main()
