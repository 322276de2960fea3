"""Prefetching a linear's weights into L2 while the kernels before it in a decode layer run.

    python benchmarks/awq_l2_ahead.py

Between the 67B's matmuls the decode step runs small kernels (norm, RoPE, attention and its merge,
SwiGLU) during which the memory mostly idles. This tries filling that time: before the kernels that
precede a linear (awq_kernels.layer_before), a kernel of one warp a program asks L2 for the first
MiB of the linear's codes, zeros and scales (`cp.async.bulk.prefetch.L2`, 32 chunks of 4 KiB a
program), waiting for the kernel before it (wait True) or not (False). Printed: what the linear adds
after the kernels before it (as awq_kernels.decode_rows counts it) for each amount. Weight copies
rotate as in awq_kernels.py, so nothing is in L2 but what is prefetched.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from awq_kernels import (
    SHAPES,
    copy_bandwidth,
    graph_ms,
    layer_before,
    make_layer,
    packed_bytes,
    random_awq,
    weight_copies,
)

_BULK = tl.constexpr("cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0;")


@triton.jit
def _l2_prefetch_kernel(ptr, CHUNK: tl.constexpr, WAIT: tl.constexpr):
    tl.extra.cuda.gdc_launch_dependents()
    if WAIT:
        tl.extra.cuda.gdc_wait()
    off = (tl.program_id(0) * 32 + tl.arange(0, 32)).to(tl.int64) * CHUNK
    size = tl.full((32,), CHUNK, tl.int32)
    tl.inline_asm_elementwise(_BULK, "=r,l,r", [ptr + off, size], dtype=tl.int32, is_pure=False, pack=1)


def prefetch(t: torch.Tensor, nbytes: int, wait: bool, chunk: int = 4096):
    u8 = t.view(torch.uint8).reshape(-1)
    nbytes = min(nbytes, u8.numel()) // (32 * chunk) * (32 * chunk)
    if nbytes:
        _l2_prefetch_kernel[(nbytes // (32 * chunk),)](
            u8, CHUNK=chunk, WAIT=wait, num_warps=1, launch_pdl=True
        )


def weights(layer):
    p = layer.kernel_weight
    return [p.qweight, p.zeros, p.scales]


AMOUNTS = [(0, True), (8, True), (16, True), (24, True), (36, True), (16, False), (36, False), (0, True)]


def shape_rows(name: str, copy_gbs: float) -> None:
    """For one 67B linear: what it adds after the kernels before it, with each amount prefetched."""
    k, n = SHAPES[name]
    layers = [make_layer(k, n, *random_awq(k, n)) for _ in range(weight_copies(k, n))]
    x = torch.empty(1, k, device="cuda", dtype=torch.float16)
    block = layers[0].x16_block(x) if name.startswith(("qkv", "o ")) else None
    producer, before = layer_before(name, k, block)
    total = packed_bytes(layers[0].kernel_weight)
    chain = range(2 * len(layers))

    def step(i: int, mib: int, wait: bool) -> torch.Tensor:
        layer = layers[i % len(layers)]
        for t in weights(layer) if mib else []:  # each tensor its share of the amount
            prefetch(t, int(mib * 2**20 * t.numel() * t.element_size() / total), wait)
        return layer(*producer(i))

    base = graph_ms([lambda i=i: producer(i) for i in chain])
    print(
        f"\n{name} after {before}; weight {total / 2**20:.1f} MiB; the kernels before alone {base * 1000:.1f} µs"
    )
    for mib, wait in AMOUNTS:
        both = graph_ms([lambda i=i, mib=mib, wait=wait: step(i, mib, wait) for i in chain])
        added = both - base
        print(
            f"prefetch {mib:>2} MiB (wait {wait!s:5}): they + it {both * 1000:6.1f} µs, it adds "
            f"{added * 1000:5.1f} ({100 * total / added / 1e6 / copy_gbs:.0f}% of copy)",
            flush=True,
        )


def main() -> None:
    copy_gbs = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}; triton {triton.__version__}; copy bandwidth {copy_gbs:.0f} GB/s")
    for name in ("o 8192→8192", "qkv 8192→10240", "gate_up 8192→44032", "down 22016→8192"):
        shape_rows(name, copy_gbs)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
