"""Tensor parallel (tameshi.parallel): tp=2 over gloo on CPU gives tp=1's logits and greedy tokens.

The tp=2 runs start a second process (rank 1) the way `--tp 2` does; one more test runs every rank
under torchrun. The shard arithmetic is checked on its own first: AWQ groups stay whole per rank.
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_llama import write_tiny_llama

from tameshi import LLM, SamplingParams
from tameshi.engine.runner import StepPlan, forward_step
from tameshi.errors import InvalidRequestError, UnsupportedModelError
from tameshi.loading.awq import dequantize_gemm
from tameshi.model.config import ModelConfig
from tameshi.parallel.shard import check_shardable, shard_tensor
from tameshi.quantize.synth import synth

PROMPTS = ["Hello there", "The capital of France is a city that"]
GREEDY = SamplingParams(max_new_tokens=12, min_new_tokens=12, do_sample=False)
AWQ_TINY = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 512,
    "max_position_embeddings": 256,
}  # fmt: skip


@pytest.fixture(scope="module")
def fp_dir(tmp_path_factory):
    """A tiny random GQA Llama (8 heads, 2 KV heads) with the DeepSeek-LLM fixture tokenizer."""
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tp-fp")
    write_tiny_llama(folder, num_hidden_layers=2)
    return folder


@pytest.fixture(scope="module")
def awq_dir(tmp_path_factory):
    """A tiny synthetic AutoAWQ GEMM checkpoint, group size 32: o_proj and down_proj split along K
    into 64 and 128 rows per rank, whole groups each."""
    folder = tmp_path_factory.mktemp("tp-awq")
    (folder / "config.json").write_text(json.dumps(AWQ_TINY))
    return synth(str(folder / "config.json"), folder / "out", quant="awq", group_size=32)


def last_logits(llm: LLM, ids: list[int]) -> torch.Tensor:
    """Logits of the last prompt position through the engine's own step (every rank runs it)."""
    engine = llm.engine
    table = list(range(-(-len(ids) // engine.cache.block_size)))  # a fresh engine: nothing cached there
    plan = StepPlan(ids, list(range(len(ids))), [(table, 0, len(ids))], [len(ids) - 1])
    if engine.model.tp is not None:
        engine.model.tp.send(plan)
    with torch.inference_mode():
        return forward_step(engine.model, engine.cache, plan)[0]


def check_tp_equals_single(folder: Path, device: str = "cpu", dtype: str = "float32") -> None:
    """tp=2 against tp=1: logits close, and the same greedy tokens for a batch of two prompts, in half
    precision too: each rank's partial sum reaches the all-reduce in float32 and the total is rounded
    once, as tp=1's matmul rounds it (rounding each half first flips near ties)."""
    single = LLM(str(folder), device=device, dtype=dtype, progress=False)
    ids = single.tokenizer.encode(PROMPTS[1], add_special_tokens=True)
    want_logits = last_logits(single, ids).float()
    want = [c.token_ids for c in single.generate(PROMPTS, GREEDY)]
    del single
    parallel = LLM(str(folder), device=device, dtype=dtype, progress=False, tp=2)
    try:
        model = parallel.loaded.model
        # rank 0 holds only its shard: half the vocabulary, the heads, the KV pool's heads
        assert model.embed_tokens.weight.shape[0] == model.config.vocab_size // 2
        assert model.rank_config.n_kv_heads == model.config.n_kv_heads // 2
        assert parallel.engine.cache.k.shape[2] == model.config.n_kv_heads // 2
        got_logits = last_logits(parallel, ids).float()
        if dtype == "float32":
            torch.testing.assert_close(got_logits, want_logits, atol=1e-4, rtol=1e-4)
        else:
            assert ((got_logits - want_logits).norm() / want_logits.norm()).item() < 2e-2
        assert [c.token_ids for c in parallel.generate(PROMPTS, GREEDY)] == want
    finally:
        parallel.close()


def test_awq_shards_keep_groups_whole(awq_dir):
    """Each rank's dequantized AWQ shard equals its slice of the whole dequantized weight."""
    from safetensors import safe_open

    with safe_open(str(next(awq_dir.glob("*.safetensors"))), "pt") as f:
        for proj, split_dim in (("self_attn.k_proj", 1), ("mlp.down_proj", 0)):  # column: N, row: K
            name = f"model.layers.0.{proj}."
            full = {k: f.get_tensor(name + k) for k in ("qweight", "qzeros", "scales")}
            whole = dequantize_gemm(full["qweight"], full["qzeros"], full["scales"], 32)  # [K, N]
            for rank in range(2):
                part = {k: shard_tensor(name + k, t, rank, 2) for k, t in full.items()}
                got = dequantize_gemm(part["qweight"], part["qzeros"], part["scales"], 32)
                torch.testing.assert_close(got, whole.chunk(2, dim=split_dim)[rank], atol=0, rtol=0)


def test_unshardable_models_are_refused_in_one_line(awq_dir):
    base = ModelConfig.from_hf(dict(AWQ_TINY, num_key_value_heads=1))
    with pytest.raises(UnsupportedModelError, match="num_key_value_heads 1 is not divisible by --tp 2"):
        check_shardable(base, 2)
    with pytest.raises(UnsupportedModelError, match="num_attention_heads 8 is not divisible by --tp 3"):
        check_shardable(base, 3)
    ok = ModelConfig.from_hf(json.loads((awq_dir / "config.json").read_text()))
    check_shardable(ok, 2)
    for key, bad in (("vocab_size", 511), ("intermediate_size", 255)):
        with pytest.raises(UnsupportedModelError, match=f"{key} {bad} is not divisible by --tp 2"):
            check_shardable(dataclasses.replace(ok, **{key: bad}), 2)
    # o_proj has 128 inputs: 64 per rank cannot hold whole groups of 128
    big_groups = dataclasses.replace(ok, awq=dataclasses.replace(ok.awq, group_size=128))
    with pytest.raises(
        UnsupportedModelError, match="o_proj has 128 inputs in groups of 128: --tp 2 would split"
    ):
        check_shardable(big_groups, 2)
    with pytest.raises(InvalidRequestError, match="does not combine with --tp"):
        LLM(str(awq_dir), progress=False, tp=2, quantize="int8")


def test_tp2_equals_tp1_fp32_gqa(fp_dir):
    check_tp_equals_single(fp_dir)


def test_tp2_equals_tp1_bf16(fp_dir):
    """Half precision on CPU: greedy tokens equal only because partial sums are reduced in float32
    (with each rank's half rounded to bfloat16 first, a token parts within the first 12)."""
    check_tp_equals_single(fp_dir, dtype="bfloat16")


def test_tp2_graph_decode_steps_equal_tp1(tmp_path):
    """The CUDA-graph decode path under --tp, minus the capture: off CUDA, DecodeGraphs runs the same
    static buffers and padded buckets eagerly. Rank 0 sends CaptureGraphs, then a GraphStep per step,
    and the follower runs its own (were it not to, rank 0's all-reduce would wait forever); the greedy
    tokens of a batch equal tp=1's eager ones."""
    (tmp_path / "config.json").write_text(json.dumps(AWQ_TINY))
    name = f"synth:{tmp_path / 'config.json'}"
    single = LLM(name, device="cpu", progress=False)
    want = [c.token_ids for c in single.generate(PROMPTS, GREEDY)]
    del single
    parallel = LLM(name, device="cpu", progress=False, tp=2)
    try:
        runner = parallel.engine.runner
        assert runner.graphs is None  # eager on CPU; the graphs below are put in by hand
        runner.graphs = parallel.engine.make_decode_graphs()
        assert [c.token_ids for c in parallel.generate(PROMPTS, GREEDY)] == want
        assert runner.graphs.graphs  # decode steps went through the graph path (bucket 2, then 1)
        assert parallel.generate(PROMPTS[0], GREEDY).token_ids == want[0]
    finally:
        parallel.close()
    assert not runner.graphs.graphs  # released before the process group closed


def test_a_dead_rank_fails_the_model_in_one_line(tmp_path):
    """A follower killed mid-session: the next request raises TensorParallelError naming the rank
    (not the transport's text, not a per-request failure to retry), every later one too, closing
    returns, and a new tensor-parallel model can start in the same process."""
    from tameshi.errors import TensorParallelError

    (tmp_path / "config.json").write_text(json.dumps(AWQ_TINY))
    name = f"synth:{tmp_path / 'config.json'}"
    llm = LLM(name, device="cpu", progress=False, tp=2)
    want = llm.generate(PROMPTS[0], GREEDY).token_ids
    follower = llm.loaded.launch.procs[0]
    follower.kill()
    follower.wait()
    for _ in range(2):
        with pytest.raises(
            TensorParallelError, match=r"^tensor-parallel rank 1 exited with code -9; the model"
        ):
            llm.generate(PROMPTS[0], GREEDY)
    assert llm.engine.stats().kv_blocks_used == 0
    llm.close()
    again = LLM(name, device="cpu", progress=False, tp=2)
    try:
        assert again.generate(PROMPTS[0], GREEDY).token_ids == want
    finally:
        again.close()


def test_batch_invariant_under_tp_is_refused_and_the_ranks_stop(tmp_path, monkeypatch):
    """An engine that cannot be built under --tp (here: batch-invariant mode) fails in one line, and
    the follower it had started exits instead of waiting for steps forever."""
    from tameshi.engine.engine import EngineConfig
    from tameshi.parallel.launch import Launch

    followers: list[subprocess.Popen] = []
    shutdown = Launch.shutdown

    def watched(self):
        followers.extend(self.procs)
        shutdown(self)

    monkeypatch.setattr(Launch, "shutdown", watched)
    (tmp_path / "config.json").write_text(json.dumps(AWQ_TINY))
    name = f"synth:{tmp_path / 'config.json'}"
    with pytest.raises(
        UnsupportedModelError, match="batch-invariant mode does not combine with tensor parallel"
    ):
        LLM(name, device="cpu", progress=False, tp=2, engine_config=EngineConfig(batch_invariant=True))
    assert len(followers) == 1 and followers[0].poll() == 0  # told to stop, and exited cleanly


def test_tp2_equals_tp1_on_an_in_memory_synth(tmp_path):
    """`synth:CONFIG` under --tp: every rank draws the same tensors on its own device and keeps its
    shard (the 67B bf16 benchmark's way, where the checkpoint would not fit the disk)."""
    (tmp_path / "config.json").write_text(json.dumps(AWQ_TINY))
    check_tp_equals_single(f"synth:{tmp_path / 'config.json'}")


def test_tp2_equals_tp1_awq(awq_dir):
    check_tp_equals_single(awq_dir)


def test_cli_under_torchrun_equals_tp1(fp_dir):
    """Every rank runs `tameshi ask --tp 2` (env:// rendezvous); rank 0 alone prints the answer."""
    args = ["ask", "--raw", "--greedy", "-n", "8", "--min-new-tokens", "8", "--device", "cpu"]
    args += ["--model", str(fp_dir), PROMPTS[0]]
    single = subprocess.run([sys.executable, "-m", "tameshi", *args], capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    run = subprocess.run(
        [*torchrun, "-m", "tameshi", *args, "--tp", "2"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == single.stdout


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("checkpoint", ["fp", "awq"])
def test_tp2_equals_tp1_on_two_gpus(checkpoint, dtype, fp_dir, awq_dir):
    """NCCL across two GPUs: float32 runs the PyTorch path; float16 the Triton kernels (the AWQ ones on
    each rank's half of N or K, their float32 accumulators handed to the all-reduce). Tokens equal."""
    from tameshi.model import linear

    check_tp_equals_single(fp_dir if checkpoint == "fp" else awq_dir, device="cuda", dtype=dtype)
    assert linear._mm_out_dtype, "cuBLAS float32 partial sums (torch.mm out_dtype) fell back"


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_tp2_cuda_graph_step_equals_eager_on_two_gpus(fp_dir):
    """tp=2 with its decode steps captured as CUDA graphs (all-reduces and the logits gather inside):
    one decode step replayed equals the same step run eagerly, whole generations run through the
    graphs on both ranks, and closing returns (graphs released before NCCL's communicator)."""
    from tameshi.engine.engine import EngineConfig

    config = EngineConfig(max_num_seqs=4)
    llm = LLM(str(fp_dir), device="cuda", dtype="float16", progress=False, tp=2, engine_config=config)
    try:
        engine, model = llm.engine, llm.loaded.model
        assert engine.runner.graphs is not None
        ids = llm.tokenizer.encode(PROMPTS[1], add_special_tokens=True)
        n, bs = len(ids), engine.cache.block_size
        table = list(range(n // bs + 1))
        with torch.inference_mode():
            prefill = StepPlan(ids, list(range(n)), [(table, 0, n)], [n - 1])
            model.tp.send(prefill)
            token = int(forward_step(model, engine.cache, prefill)[0].argmax())
            decode = StepPlan([token], [n], [(table, n, 1)], [0])
            model.tp.send(decode)
            eager = forward_step(model, engine.cache, decode).float()
            slot = table[n // bs] * bs + n % bs
            graph = engine.runner.graphs.run([token], [n], [slot], [table]).float()
        assert ((graph - eager).norm() / eager.norm()).item() < 1e-2
        done = llm.generate(PROMPTS, GREEDY)
        assert [len(c.token_ids) for c in done] == [12, 12]
        assert len(engine.runner.graphs.graphs) == len(engine.runner.graphs.buckets)
    finally:
        llm.close()
