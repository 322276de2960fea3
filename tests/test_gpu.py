"""The same code paths on CUDA: logits equal transformers on the GPU, generation equals the CPU run."""

import dataclasses
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tiny_llama import write_tiny_llama  # noqa: E402

from tameshi import LLM, SamplingParams  # noqa: E402
from tameshi.engine.kv_cache import ContiguousKVCache  # noqa: E402
from tameshi.loading.build import build_model  # noqa: E402
from tameshi.loading.safetensors import checkpoint_files, iter_tensors  # noqa: E402
from tameshi.model.config import ModelConfig  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random GQA Llama with the DeepSeek-LLM fixture tokenizer and template."""
    folder = tmp_path_factory.mktemp("tiny")
    return folder, write_tiny_llama(folder)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_equal_transformers_on_cuda(tiny, dtype):
    import copy

    folder, ref = tiny
    ids = torch.randint(0, 512, (48,), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        exact = copy.deepcopy(ref).to("cuda")(ids[None]).logits[0].float()
        hf_same_dtype = copy.deepcopy(ref).to("cuda", dtype)(ids[None]).logits[0].float()
    config = ModelConfig.from_hf(json.loads((folder / "config.json").read_text()))
    model = build_model(config, iter_tensors(checkpoint_files(folder)), torch.device("cuda"), dtype)
    cache = ContiguousKVCache(config, 48, torch.device("cuda"), dtype)
    with torch.inference_mode():
        cache.begin_step(48)
        got = model.compute_logits(model(ids, torch.arange(48, device="cuda"), cache))
    assert got.dtype == torch.float32  # from the matmul's accumulator, never rounded to the model's dtype
    if dtype == torch.float32:
        torch.testing.assert_close(got, exact, atol=1e-4, rtol=1e-4)
    else:
        # bf16 rounds differently in fused vs separate matmuls; what matters is that we are no further
        # from the fp32 truth than transformers itself is in bf16.
        ours = ((got - exact).norm() / exact.norm()).item()
        theirs = ((hf_same_dtype - exact).norm() / exact.norm()).item()
        print(f"bf16 relative error vs fp32: tameshi {ours:.4f}, transformers {theirs:.4f}")
        assert ours <= 1.5 * theirs + 1e-3


def test_generation_on_cuda_equals_cpu(tiny):
    folder, _ = tiny
    params = SamplingParams(max_new_tokens=24, min_new_tokens=24, do_sample=False, repetition_penalty=1.1)
    cpu = LLM(str(folder), device="cpu", progress=False).ask("Hello there", params)
    gpu = LLM(str(folder), device="cuda", dtype="float32", progress=False)
    assert gpu.loaded.model.embed_tokens.weight.is_cuda
    assert gpu.ask("Hello there", params).token_ids == cpu.token_ids
    seeded = SamplingParams(max_new_tokens=16, do_sample=True, temperature=0.9, top_k=40, seed=3)
    assert gpu.ask("Hi", seeded).token_ids == gpu.ask("Hi", seeded).token_ids


def test_batched_engine_on_cuda_equals_solo(tiny):
    """The paged engine on CUDA: a batch with chunked prefill and a tight pool equals solo runs."""
    from tameshi.engine.engine import Engine, EngineConfig

    folder, _ = tiny
    llm = LLM(str(folder), device="cuda", dtype="float32", progress=False)
    prompts = [llm.tokenizer.encode("word " * n) for n in (3, 20, 45, 7, 70, 10)]
    assert max(len(p) for p in prompts) + 20 < 16 * 16  # the tight pool holds any one of them
    params = SamplingParams(max_new_tokens=20, min_new_tokens=20, do_sample=False).resolve({})

    def engine(**config):
        return Engine(llm.loaded.model, llm.tokenizer, llm.loaded.generation_config, EngineConfig(**config))

    solo = [[t for o in engine().stream(p, params) for t in o.token_ids] for p in prompts]
    tight = engine(num_kv_blocks=16, max_num_batched_tokens=64)
    got = {i: [] for i in range(len(prompts))}
    for i, out in tight.generate_batch([(p, params) for p in prompts]):
        got[i] += out.token_ids
    assert list(got.values()) == solo
    assert tight.stats().preemptions > 0 and tight.stats().kv_blocks_used == 0
    assert engine().stats().kv_blocks_total > 1000  # sized from free GPU memory


def test_awq_checkpoint_on_cuda_equals_cpu(tmp_path):
    from tameshi.quantize.synth import synth

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
    }))  # fmt: skip
    out = synth(str(cfg), tmp_path / "awq", quant="awq", group_size=64)
    params = SamplingParams(max_new_tokens=12, min_new_tokens=12, do_sample=False)
    cpu = LLM(str(out), device="cpu", progress=False).ask("Hello", params)
    gpu = LLM(str(out), device="cuda", dtype="float32", progress=False)
    assert type(gpu.loaded.model.layers[0].mlp.down_proj).__name__ == "AWQLinear"
    assert gpu.ask("Hello", params).token_ids == cpu.token_ids
    half = LLM(str(out), device="cuda", progress=False)  # the default dtype on CUDA
    assert half.ask("Hello", params).completion_tokens == 12


SHAPES_67B = [(8192, 10240), (8192, 8192), (8192, 44032), (22016, 8192)]  # qkv, o, gate_up, down


def random_awq_on_cuda(k: int, n: int, group: int, gen: torch.Generator):
    """AutoAWQ GEMM tensors (qweight, qzeros, scales) with random codes, drawn on the GPU from `gen`."""
    qweight = torch.randint(-(2**31), 2**31 - 1, (k, n // 8), dtype=torch.int32, device="cuda", generator=gen)
    qzeros = torch.randint(
        -(2**31), 2**31 - 1, (k // group, n // 8), dtype=torch.int32, device="cuda", generator=gen
    )
    scales = (torch.rand(k // group, n, device="cuda", generator=gen) * 0.01 + 0.001).half()
    return qweight, qzeros, scales


@pytest.mark.parametrize(("k", "n"), SHAPES_67B)
def test_awq_kernels_at_67b_shapes_equal_reference(k, n):
    """What AWQLinear runs on CUDA (fused kernel for few rows, dequantize + cuBLAS for many) equals
    the fp32 PyTorch reference on real 67B layer shapes, group 128."""
    from tameshi.kernels.awq_triton import awq_dequantize, awq_matmul, kpack
    from tameshi.loading.awq import dequantize_gemm

    group = 128
    gen = torch.Generator(device="cuda").manual_seed(k + n)
    qweight, qzeros, scales = random_awq_on_cuda(k, n, group, gen)
    w = dequantize_gemm(qweight, qzeros, scales, group)  # fp32 [k, n]
    packed = kpack(qweight, qzeros, scales, group)
    del qweight, qzeros
    assert torch.equal(awq_dequantize(packed, torch.float16), w.half())
    for m in (1, 4, 16, 64, 512):
        x = torch.randn(m, k, device="cuda", generator=gen).half()
        ref = x.float() @ w
        got = awq_matmul(x, packed).float()
        tol = 2e-3 * ref.abs().max().item()  # fp16 output rounding; summation order differs
        torch.testing.assert_close(got, ref, rtol=2e-3, atol=tol)
        del x, ref, got
    del w
    torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def gate_up_67b():
    """The 67B gate_up layer (8192 -> 44032, group 128): kernel layout and fp32 reference."""
    from tameshi.kernels.awq_triton import kpack
    from tameshi.loading.awq import dequantize_gemm

    k, n, group = 8192, 44032, 128
    gen = torch.Generator(device="cuda").manual_seed(1)
    qweight, qzeros, scales = random_awq_on_cuda(k, n, group, gen)
    packs = {paired: kpack(qweight, qzeros, scales, group, paired) for paired in (False, True)}
    yield packs, dequantize_gemm(qweight, qzeros, scales, group)
    torch.cuda.empty_cache()


@pytest.mark.parametrize(
    "variant",
    [
        "default",
        "fixup",
        "magic",
        "by_word",
        "pairs",
        "scaled",
        "whole_split",
        "half2",
        "swap",
        "paired",
        "stream",
    ],
)
@pytest.mark.parametrize("m", [1, 4, 16, 64])
def test_awq_kernel_variants_at_the_gate_up_shape(request, gate_up_67b, m, variant):
    """Each switch of the decode tiles on its own, against the reference: which of them is exact
    enough (the default's switches flipped one at a time)."""
    import dataclasses

    if variant == "fixup" and m == 4:  # a known fault, run and reported, not hidden (MatmulConfig.fixup)
        reason = "the 16-row tile's one-launch split-K sum leaves one tile's rows near zero in ~25% of calls"
        request.applymarker(pytest.mark.xfail(reason=reason, strict=False))

    from tameshi.kernels.awq_triton import awq_matmul, default_config

    packs, w = gate_up_67b
    packed = packs[variant == "paired"]  # the paired nibble order (KPacked.paired), default tiles
    cfg = default_config(m, 44032, 8192, 128)
    one_row_only, tile_only = {"whole_split", "half2", "stream"}, {"by_word", "pairs", "scaled", "swap"}
    if variant in (tile_only if cfg.block_m == 1 else one_row_only):
        pytest.skip(f"{variant} is not a switch of the {'one-row' if cfg.block_m == 1 else 'tile'} kernel")
    if variant == "scaled":
        cfg = dataclasses.replace(cfg, pairs=True, scaled=not cfg.scaled)
    elif variant == "stream":  # paired words only, 128 columns a warp
        packed = packs[True]
        cfg = dataclasses.replace(cfg, stream=True, num_warps=cfg.block_n // 128)
    elif variant not in ("default", "paired"):
        cfg = dataclasses.replace(cfg, **{variant: not getattr(cfg, variant)})
    x = torch.randn(m, 8192, device="cuda", generator=torch.Generator(device="cuda").manual_seed(m)).half()
    ref = x.float() @ w
    got = awq_matmul(x, packed, cfg).float()
    err = (got - ref).abs().max().item() / ref.abs().max().item()
    assert err < 2e-3, f"{cfg}: max error {err:.2e} of the largest output"


@pytest.mark.parametrize("m", [1, 2, 4, 8, 16, 64])
def test_default_awq_tiles_are_right_in_every_call(gate_up_67b, m):
    """The tiles awq_matmul picks by default at the 67B gate_up shape, 100 calls on the same x: every
    call within tolerance of the reference. The 16-row tile with the one-launch split-K sum (off by
    default) was wrong in 25 of 100 calls at 4 rows; the default one-row and 8-row tiles use that sum,
    so a race in it would show here as a call out of tolerance."""
    from tameshi.kernels.awq_triton import awq_matmul

    packs, w = gate_up_67b
    packed = packs[True]  # the paired words AWQLinear keeps
    x = torch.randn(m, 8192, device="cuda", generator=torch.Generator(device="cuda").manual_seed(m)).half()
    ref = x.float() @ w
    top = ref.abs().max().item()
    errors = []
    for _ in range(100):
        errors.append(((awq_matmul(x, packed).float() - ref).abs().max() / top).item())
    wrong = sum(e >= 2e-3 for e in errors)
    assert wrong == 0, f"{m} rows: {wrong} of 100 calls out of tolerance (worst {max(errors):.2e})"


def stream_subset(k: int) -> list:
    """A few of the streamed kernel's tiles (awq_gemv.stream_configs): each width and unit/depth once,
    at 2-4 units a program where K allows."""
    from tameshi.kernels.awq_gemv import stream_configs

    shapes: dict[tuple, list] = {}
    for cfg in stream_configs(k, 128):
        shapes.setdefault((cfg.block_n, cfg.block_k, cfg.depth), []).append(cfg)
    return [min(same, key=lambda c: abs(k // c.block_k // c.split_k - 3)) for same in shapes.values()]


@pytest.mark.parametrize(("k", "n"), SHAPES_67B)
def test_streamed_one_row_kernel_at_67b_shapes_equals_reference(k, n):
    """The streamed one-row kernel's PTX (awq_gemv; the CPU tests run its interpreter form) at the 67B
    shapes, for each width, unit and depth: within 2e-3 of the largest output, every column written
    (y starts as NaN), its split-K scratch left zero."""
    packed, w, gen = paired_awq_and_reference(k, n, seed=k + n + 1)
    x = torch.randn(1, k, device="cuda", generator=gen).half()
    for cfg in stream_subset(k):
        assert_tile_equals_reference(x, packed, w, cfg)
    del w
    torch.cuda.empty_cache()


def paired_awq_and_reference(k: int, n: int, seed: int):
    """A random group-128 AWQ weight in AWQLinear's layout (paired words) on the GPU, its fp32
    reference W^T, and the generator, to draw x from next."""
    from tameshi.kernels.awq_triton import kpack
    from tameshi.loading.awq import dequantize_gemm

    gen = torch.Generator(device="cuda").manual_seed(seed)
    qweight, qzeros, scales = random_awq_on_cuda(k, n, 128, gen)
    return (
        kpack(qweight, qzeros, scales, 128, paired=True),
        dequantize_gemm(qweight, qzeros, scales, 128),
        gen,
    )


def assert_tile_equals_reference(x: torch.Tensor, packed, w: torch.Tensor, cfg) -> None:
    """One tile's launch on x: within 2e-3 of the largest output, every column written (y starts as
    NaN), its split-K scratch left zero."""
    from tameshi.kernels.awq_triton import _scratch, launch, split_k_scratch

    m, n = x.shape[0], w.shape[1]
    ref = x.float() @ w
    y = torch.full((m, n), float("nan"), dtype=torch.float16, device="cuda")
    launch(x, packed, cfg, y, *split_k_scratch(x.device, m * n, n // cfg.block_n))
    got = y.float()
    assert got.isfinite().all(), cfg
    err = (got - ref).abs().max().item() / ref.abs().max().item()
    assert err < 2e-3, f"{cfg}, {m} rows: max error {err:.2e} of the largest output"
    ws, counts = _scratch[x.device]
    assert not ws.any() and not counts.any(), cfg


def mma_subset(k: int) -> list:
    """A few of the tensor-core one-row tiles (awq_mma.mma_configs): each width and depth once, at
    the most and the fewest blocks a program."""
    from tameshi.kernels.awq_mma import mma_configs

    shapes: dict[tuple, list] = {}
    for cfg in mma_configs(k, 128):
        shapes.setdefault((cfg.block_n, cfg.depth), []).append(cfg)
    return [
        c
        for same in shapes.values()
        for c in {min(same, key=lambda c: c.split_k), max(same, key=lambda c: c.split_k)}
    ]


@pytest.mark.parametrize(("k", "n"), SHAPES_67B)
def test_tensor_core_one_row_kernel_at_67b_shapes_equals_reference(k, n):
    """The tensor-core one-row kernel's PTX (awq_mma; the CPU tests run it in an ISA interpreter) at
    the 67B shapes, one row and (its 8-row tiles) 3 and 8: within 2e-3 of the largest output, every
    column written, the scratch left zero."""
    packed, w, gen = paired_awq_and_reference(k, n, seed=k + n + 2)
    x = torch.randn(1, k, device="cuda", generator=gen).half()
    xs = torch.randn(8, k, device="cuda", generator=gen).half()
    eight = [dataclasses.replace(c, block_m=8) for c in mma_subset(k)[::3]]
    cases = [(x, cfg) for cfg in mma_subset(k)] + [(xs[:m], cfg) for cfg in eight for m in (3, 8)]
    for rows, cfg in cases:
        assert_tile_equals_reference(rows, packed, w, cfg)
    del w
    torch.cuda.empty_cache()


@pytest.mark.parametrize(("k", "n"), SHAPES_67B)
def test_x16_one_row_kernel_at_67b_shapes_equals_reference(k, n):
    """The dp2a one-row kernel's PTX (awq_x16; the CPU tests run an interpreter of it) at the 67B shapes,
    for each width, unit, depth and the tile awq_matmul picks: within 2e-3 of the largest output (x
    with an outlier of 40), every column written, its split-K scratch left zero; bf16 x too."""
    from tameshi.kernels.awq_x16 import x16_config, x16_configs

    packed, w, gen = paired_awq_and_reference(k, n, seed=k + n + 3)
    x = torch.randn(1, k, device="cuda", generator=gen).half()
    x[0, 7] = 40.0
    shapes: dict[tuple, list] = {}
    for cfg in x16_configs(k, 128):
        shapes.setdefault((cfg.block_n, cfg.block_k, cfg.depth), []).append(cfg)
    tiles = [min(same, key=lambda c: abs(k // c.block_k // c.split_k - 3)) for same in shapes.values()]
    for cfg in [x16_config(n, k, 128), *tiles]:
        assert_tile_equals_reference(x, packed, w, cfg)
    assert_tile_equals_reference(x.bfloat16(), packed, w, x16_config(n, k, 128))
    del w
    torch.cuda.empty_cache()


@pytest.mark.parametrize("kernel", ["stream", "mma", "mma-rows", "x16", "x16-norm"])
def test_streamed_one_row_kernel_reads_x_after_the_kernel_that_writes_it(kernel):
    """With programmatic dependent launch the one-row kernels (streamed, tensor-core, dp2a) start while the
    norm before them is still running, and may only load their weights then: inside a CUDA graph,
    norm -> matmul -> norm -> matmul on fresh inputs each replay equals the same chain run eagerly
    one kernel at a time. x16-norm: the norm writes x quantized for the dp2a kernel itself."""
    from tameshi.kernels import pdl
    from tameshi.kernels.awq_triton import MatmulConfig, awq_matmul, default_config, kpack
    from tameshi.kernels.fused import add_rms_norm, add_rms_norm_x16

    if not pdl(torch.device("cuda")):
        pytest.skip("programmatic dependent launch needs sm_90")
    k = 8192
    gen = torch.Generator(device="cuda").manual_seed(5)
    packed = kpack(*random_awq_on_cuda(k, k, 128, gen), 128, paired=True)
    weight = torch.rand(k, device="cuda", generator=gen).half() + 0.5
    cfg = MatmulConfig(1, 256, 128, 16, 2, by_word=True, magic=True, fixup=True, stream=True)
    if kernel == "mma":
        cfg = MatmulConfig(1, 256, 32, 32, 4, fixup=True, mma=True, depth=2)
    if kernel.startswith("x16"):  # quantize_x (or the norm) and the kernel: both wait for the norm before
        cfg = default_config(1, k, k, 128, x16=True)
        assert cfg.x16
    m = 1
    if kernel == "mma-rows":  # 4 rows in the 8-row tile, as awq_matmul picks for them
        m, cfg = 4, default_config(4, k, k, 128, stream=True)
        assert cfg.mma and cfg.block_m == 8
    src = torch.randn(m, k, device="cuda", generator=gen).half()

    def norm_matmul(x):
        if kernel == "x16-norm":
            _, h, h_q = add_rms_norm_x16(x, None, weight, 1e-6, 128)
            return awq_matmul(h, packed, x_q=h_q)
        _, h = add_rms_norm(x, None, weight, 1e-6)
        return awq_matmul(h, packed, cfg)

    def chain():
        return norm_matmul(norm_matmul(src))

    chain()  # compile outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        chain()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain()
    for seed in range(5):
        src.copy_(
            torch.randn(m, k, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed))
        )
        graph.replay()
        torch.cuda.synchronize()
        _, h = add_rms_norm(src, None, weight, 1e-6)
        torch.cuda.synchronize()
        y = awq_matmul(h, packed, cfg)
        torch.cuda.synchronize()
        _, h = add_rms_norm(y, None, weight, 1e-6)
        torch.cuda.synchronize()
        want = awq_matmul(h, packed, cfg)  # x16-norm: as quantize_x and the dp2a kernel compute it
        err = (out.float() - want.float()).abs().max().item() / want.float().abs().max().item()
        assert err < 1e-2, f"replay {seed}: {err:.2e}"  # split K adds in any order; stale x is far off


@pytest.mark.parametrize(("k", "n"), [(8192, 10240), (8192, 44032), (22016, 8192)])
def test_batch_invariant_awq_rows_do_not_depend_on_the_batch(k, n):
    """invariant_config at 67B shapes (split K 2 and 1): every row's output, bit for bit, is the same
    whatever the row count (tiles of 16, 64 and 128 rows) and wherever the row sits in the batch;
    and it equals the fp32 reference."""
    from tameshi.kernels.awq_triton import awq_matmul, invariant_config, kpack
    from tameshi.loading.awq import dequantize_gemm

    group = 128
    gen = torch.Generator(device="cuda").manual_seed(k + n)
    qweight, qzeros, scales = random_awq_on_cuda(k, n, group, gen)
    packed = kpack(qweight, qzeros, scales, group, paired=True)
    x = torch.randn(300, k, device="cuda", generator=gen).half()

    def rows(x):
        return awq_matmul(x, packed, invariant_config(x.shape[0], n, k, group, x.dtype))

    every = rows(x)
    ref = x.float() @ dequantize_gemm(qweight, qzeros, scales, group)
    torch.testing.assert_close(every.float(), ref, rtol=2e-3, atol=2e-3 * ref.abs().max().item())
    for m in (1, 3, 16, 17, 64, 65, 129):
        assert torch.equal(rows(x[:m]), every[:m]), m
    perm = torch.randperm(300, device="cuda", generator=gen)
    assert torch.equal(rows(x[perm]), every[perm])
    assert torch.equal(rows(x[perm[:5]]), every[perm[:5]])
    torch.cuda.empty_cache()


@pytest.mark.parametrize("quant", ["awq", "fp16"])
def test_batch_invariant_engine_on_cuda_equals_solo_bit_for_bit(tmp_path, quant):
    """EngineConfig.batch_invariant on CUDA in fp16, CUDA graphs on: each request, greedy or seeded,
    batched with others (prompts chunked beside decodes, batch sizes changing) gives the tokens and
    logprobs of its solo run, float for float."""
    from tameshi.engine.engine import Engine, EngineConfig
    from tameshi.quantize.synth import synth

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 512, "intermediate_size": 1024,
        "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 512,
        "max_position_embeddings": 1024,
    }))  # fmt: skip
    llm = LLM(str(synth(str(cfg), tmp_path / quant, quant=quant)), device="cuda", progress=False)
    assert llm.loaded.model.embed_tokens.weight.dtype == torch.float16

    def engine():
        config = EngineConfig(batch_invariant=True, max_num_batched_tokens=64, max_num_seqs=16)
        return Engine(llm.loaded.model, llm.tokenizer, llm.loaded.generation_config, config)

    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 512, (n,), generator=gen).tolist() for n in (3, 20, 70, 7, 130, 45, 1, 64)]
    greedy = SamplingParams(max_new_tokens=30, min_new_tokens=30, do_sample=False, logprobs=0).resolve({})

    def seeded(seed):
        params = SamplingParams(
            max_new_tokens=30,
            min_new_tokens=30,
            do_sample=True,
            temperature=0.9,
            top_p=0.9,
            seed=seed,
            logprobs=0,
        )
        return params.resolve({})

    def run(eng, jobs):
        got = {i: [] for i in range(len(jobs))}
        for i, out in eng.generate_batch(jobs):
            got[i] += [(t, lp.logprob) for t, lp in zip(out.token_ids, out.logprobs, strict=True)]
        return got

    jobs = [(p, greedy if i % 2 else seeded(i)) for i, p in enumerate(prompts)]
    batched = engine()
    together = run(batched, jobs)
    assert batched.runner.graphs is not None and batched.runner.graphs.graphs  # decode steps replayed
    for i, job in enumerate(jobs):
        assert together[i] == run(engine(), [job])[0], i


@pytest.fixture(scope="module")
def tiny_fp16(tmp_path_factory):
    """Head dim 64 (the paged decode kernel's tl.dot wants >= 16 and real models use 64-128)."""
    folder = tmp_path_factory.mktemp("tiny64")
    write_tiny_llama(
        folder, hidden_size=256, intermediate_size=512, num_attention_heads=4, max_position_embeddings=1024
    )
    return folder


def test_cuda_graph_decode_equals_eager(tiny_fp16):
    """Every decode step replayed from a CUDA graph (batch padded to a bucket) gives the logits the
    eager path gives on the same cache (both attend with the Triton paged kernel), for
    batches whose sizes are not buckets, sequences crossing block boundaries and finishing at
    different steps. (Tokens alone would not do: in fp16 another kernel may flip a near-tie.)"""
    from tameshi.engine.engine import Engine, EngineConfig
    from tameshi.engine.runner import ModelRunner

    llm = LLM(str(tiny_fp16), device="cuda", dtype="float16", progress=False)
    prompts = [llm.tokenizer.encode("word " * n) for n in (3, 20, 45, 7, 130)]
    lengths = (40, 25, 60, 33, 50)
    jobs = [
        (p, SamplingParams(max_new_tokens=n, min_new_tokens=n, do_sample=False).resolve({}))
        for p, n in zip(prompts, lengths, strict=True)
    ]
    engine = Engine(
        llm.loaded.model, llm.tokenizer, llm.loaded.generation_config,
        EngineConfig(cuda_graphs=True, max_num_seqs=8),
    )  # fmt: skip
    runner, model, cache = engine.runner, llm.loaded.model, engine.cache
    steps, worst, sizes = 0, 0.0, set()

    def checked(seqs, ids, positions):
        nonlocal steps, worst
        graphed = ModelRunner._decode_graph(runner, seqs, ids, positions).clone()
        cache.prepare([(s.block_table, p, 1) for s, p in zip(seqs, positions, strict=True)])
        eager = model.compute_logits(
            model(torch.tensor(ids, device="cuda"), torch.tensor(positions, device="cuda"), cache)
        )
        err = ((graphed.float() - eager.float()).abs().max() / eager.float().abs().max()).item()
        worst = max(worst, err)
        steps += 1
        sizes.add(len(ids))
        return graphed

    runner._decode_graph = checked
    got = {i: [] for i in range(len(jobs))}
    for i, out in engine.generate_batch(jobs):
        got[i] += out.token_ids
    print(f"{steps} graph steps, batch sizes {sorted(sizes)}, worst relative logit error {worst:.2e}")
    assert runner.graphs.graphs and steps >= max(lengths) - 1
    assert {5, 3, 1} <= sizes  # not buckets; shrinking as sequences finish
    assert worst < 1e-2
    assert [len(t) for t in got.values()] == list(lengths)
    assert engine.stats().kv_blocks_used == 0


def test_paged_decode_kernel_at_real_shapes():
    """The Triton paged decode kernel at 67B attention shapes (64 heads over 8 KV heads, dim 128),
    contexts across partitions, equals the fp32 reference."""
    from tameshi.kernels.paged_attention import paged_decode_attention, paged_decode_reference

    gen = torch.Generator(device="cuda").manual_seed(0)
    block_size, lens = 16, [1, 255, 256, 1000, 4097]
    width = -(-max(lens) // block_size)
    n_blocks = len(lens) * width
    k = torch.randn(n_blocks * block_size, 8, 128, device="cuda", generator=gen).half()
    v = torch.randn(n_blocks * block_size, 8, 128, device="cuda", generator=gen).half()
    tables = torch.randperm(n_blocks, device="cuda", generator=gen).int().view(len(lens), width)
    q = torch.randn(len(lens), 64, 128, device="cuda", generator=gen).half()
    ctx = torch.tensor(lens, dtype=torch.int32, device="cuda")
    got = paged_decode_attention(q, k, v, tables, ctx, block_size)
    want = paged_decode_reference(q.float(), k.float(), v.float(), tables, ctx, block_size)
    torch.testing.assert_close(got.float(), want, atol=2e-3, rtol=2e-3)
    for i in range(len(lens)):  # the same bits alone as in the batch
        assert torch.equal(
            paged_decode_attention(q[i : i + 1], k, v, tables[i : i + 1], ctx[i : i + 1], block_size)[0],
            got[i],
        )


def test_awq_graph_decode_takes_x_quantized_by_the_norm_and_attention(tmp_path, monkeypatch):
    """At batch 1 in fp16 an AWQ model's qkv and o projections run the dp2a kernel on x quantized by the
    norm and attention kernels themselves (no quantize_x launch); each graphed step's logits equal the
    eager step's on the streamed kernel (TAMESHI_AWQ_X16=0) on the same cache, within fp16 noise."""
    from collections import Counter

    from tameshi.engine import cuda_graphs
    from tameshi.engine.engine import Engine, EngineConfig
    from tameshi.engine.runner import ModelRunner
    from tameshi.kernels import awq_x16, fused
    from tameshi.quantize.synth import synth

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
    }))  # fmt: skip
    out = synth(str(cfg), tmp_path / "awq", quant="awq", group_size=64)  # head_dim 64: one block a head
    llm = LLM(str(out), device="cuda", dtype="float16", progress=False)
    calls = Counter()
    for module, name in ((fused, "add_rms_norm_x16"), (cuda_graphs, "paged_decode_attention_x16"), (awq_x16, "quantize_x")):  # fmt: skip
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, real=real, name=name: calls.update([name]) or real(*a))
    engine = Engine(
        llm.loaded.model, llm.tokenizer, llm.loaded.generation_config,
        EngineConfig(cuda_graphs=True, max_num_seqs=1),
    )  # fmt: skip
    runner, model, cache = engine.runner, llm.loaded.model, engine.cache
    worst, steps = 0.0, 0

    def checked(seqs, ids, positions):
        nonlocal worst, steps
        graphed = ModelRunner._decode_graph(runner, seqs, ids, positions).clone()
        with monkeypatch.context() as mp:
            mp.setenv("TAMESHI_AWQ_X16", "0")
            cache.prepare([(s.block_table, p, 1) for s, p in zip(seqs, positions, strict=True)])
            ids_t, pos_t = torch.tensor(ids, device="cuda"), torch.tensor(positions, device="cuda")
            eager = model.compute_logits(model(ids_t, pos_t, cache))
        worst = max(worst, ((graphed.float() - eager.float()).abs().max() / eager.float().abs().max()).item())
        steps += 1
        return graphed

    runner._decode_graph = checked
    params = SamplingParams(max_new_tokens=20, min_new_tokens=20, do_sample=False).resolve({})
    for _ in engine.generate_batch([(llm.tokenizer.encode("word " * 10), params)]):
        pass
    print(f"{steps} graph steps, worst relative logit error {worst:.2e}, calls {dict(calls)}")
    assert steps >= 19 and worst < 1e-2
    assert calls["add_rms_norm_x16"] and calls["paged_decode_attention_x16"] and not calls["quantize_x"]
