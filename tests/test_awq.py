"""AutoAWQ checkpoints: nibble order, dequantization, loading a GEMM checkpoint, errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tameshi.errors import CorruptCheckpointError, UnsupportedModelError
from tameshi.loading.awq import AWQ_ORDER, AWQConfig, dequantize_gemm, gemv_to_gemm, pack_gemm, unpack_gemm

transformers = pytest.importorskip("transformers")
G = 64


def test_pack_order_is_autoawqs():
    """Column c*8 + AWQ_ORDER[i] goes to bits 4i..4i+3 (AutoAWQ's WQLinear_GEMM.from_linear)."""
    values = torch.randint(0, 16, (5, 24), generator=torch.Generator().manual_seed(0))
    packed = pack_gemm(values)
    for r in range(5):
        for c in range(3):
            word = sum(int(values[r, c * 8 + AWQ_ORDER[i]]) << (4 * i) for i in range(8))
            assert packed[r, c].item() & 0xFFFFFFFF == word
    assert torch.equal(unpack_gemm(packed), values.to(torch.uint8))


def awq_quantize(w: torch.Tensor, group: int):
    """AutoAWQ's asymmetric quantizer (zero_point=True) on W [N, K]; returns q, z, s (s in fp16)."""
    n, k = w.shape
    g = w.reshape(n, k // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    s = ((hi - lo).clamp(min=1e-5) / 15).half().float()
    z = torch.clamp(-torch.round(lo / s), 0, 15)
    q = torch.clamp(torch.round(g / s[..., None]) + z[..., None], 0, 15)
    deq = ((q - z[..., None]) * s[..., None]).reshape(n, k)
    return q.reshape(n, k).int(), z.int(), s.half(), deq


def test_dequantize_matches_the_quantizer():
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(1))
    q, z, s, deq = awq_quantize(w, G)
    got = dequantize_gemm(pack_gemm(q.t()), pack_gemm(z.t()), s.t(), G)
    torch.testing.assert_close(got, deq.t(), rtol=0, atol=0)


def test_gemv_layout_converts_to_gemm():
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(2))
    q, z, s, deq = awq_quantize(w, 32)
    shifts = torch.arange(8) * 4
    plain = lambda v: (v.reshape(v.shape[0], -1, 8).long() << shifts).sum(-1)  # noqa: E731
    to_i32 = lambda v: torch.where(v >= 2**31, v - 2**32, v).int()  # noqa: E731
    qweight = to_i32(plain(q))  # [N, K/8] along K
    zeros = torch.zeros(16, 8, dtype=torch.int32)
    zeros[:, :4] = z  # 4 groups, padded to a width of one int32 (8 groups)
    qzeros = to_i32(plain(zeros))
    scales = torch.zeros(16, 8, dtype=torch.float16)
    scales[:, :4] = s
    got = dequantize_gemm(*gemv_to_gemm(qweight, qzeros, scales, 32), 32)
    torch.testing.assert_close(got, deq.t(), rtol=0, atol=0)


@pytest.fixture(scope="module")
def awq_dir(tmp_path_factory):
    """A tiny GQA Llama written in AutoAWQ's GEMM format, and transformers with the same dequantized weights."""
    folder = tmp_path_factory.mktemp("awq")
    cfg = transformers.LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    tensors = {}
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "layers" in name and name.endswith("proj.weight"):
                q, z, s, deq = awq_quantize(p, G)
                module = name.removesuffix(".weight")
                tensors[module + ".qweight"] = pack_gemm(q.t().contiguous())
                tensors[module + ".qzeros"] = pack_gemm(z.t().contiguous())
                tensors[module + ".scales"] = s.t().contiguous()
                p.copy_(deq)  # the reference computes with exactly what the checkpoint holds
            else:
                tensors[name] = p.detach().half().float().half()
                p.copy_(p.half().float())
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = cfg.to_dict() | {"architectures": ["LlamaForCausalLM"], "torch_dtype": "float16"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "quant_config.json").write_text(
        json.dumps({"zero_point": True, "q_group_size": G, "w_bit": 4, "version": "GEMM"})
    )
    fixture = Path(__file__).parent / "fixtures" / "deepseek-llm"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(fixture / name, folder / name)
    return folder, ref


def _load(folder, **kw):
    from tameshi.loading.awq import merge_side_config
    from tameshi.loading.build import build_model
    from tameshi.loading.safetensors import checkpoint_files, iter_tensors
    from tameshi.model.config import ModelConfig

    config = ModelConfig.from_hf(merge_side_config(folder, json.loads((folder / "config.json").read_text())))
    return build_model(config, iter_tensors(checkpoint_files(folder)), torch.device("cpu"), torch.float32)


def _logits(model, ids):
    from tameshi.engine.kv_cache import ContiguousKVCache

    cache = ContiguousKVCache(model.config, len(ids), torch.device("cpu"), torch.float32)
    cache.begin_step(len(ids))
    with torch.inference_mode():
        return model.compute_logits(model(ids, torch.arange(len(ids)), cache))


def test_awq_checkpoint_logits_equal_transformers_on_the_same_weights(awq_dir):
    folder, ref = awq_dir
    model = _load(folder)
    assert model.config.awq == AWQConfig(group_size=G)
    assert type(model.layers[0].self_attn.qkv_proj).__name__ == "AWQLinear"
    ids = torch.randint(0, 512, (24,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref(ids[None]).logits[0]
    torch.testing.assert_close(_logits(model, ids), expected, atol=1e-4, rtol=1e-4)
    # the CPU int4 mode requantizes the AWQ weights on 32-wide groups: within half a 4-bit step
    from tameshi.kernels.cpu_weight_only import INT4_GROUP, int4_dequantize, int4_quantize

    dense = model.layers[0].mlp.down_proj.dense_weight()
    q, scale, zero = int4_quantize(dense)
    step = scale.float().repeat_interleave(INT4_GROUP, dim=1)
    assert ((int4_dequantize(q, scale, zero) - dense).abs() <= 0.5 * step + 0.01 * dense.abs().max()).all()


def test_awq_model_through_the_cli(awq_dir, capsys):
    from tameshi.cli import main

    folder, _ = awq_dir
    assert main(["info", "--model", str(folder)]) == 0
    assert "awq" in capsys.readouterr().out
    assert main(["ask", "Hello", "--model", str(folder), "-n", "4", "--greedy"]) == 0


def test_awq_errors(awq_dir, tmp_path):
    from safetensors.torch import load_file

    folder, _ = awq_dir
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "quant_config.json").write_text(json.dumps({"w_bit": 8, "q_group_size": G, "version": "GEMM"}))
    with pytest.raises(UnsupportedModelError, match="8-bit"):
        _load(bad)
    shutil.copy(folder / "quant_config.json", bad / "quant_config.json")
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.mlp.down_proj.scales"] = tensors["model.layers.0.mlp.down_proj.scales"][:1]
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(CorruptCheckpointError, match=r"down_proj\.scales"):
        _load(bad)


@pytest.mark.parametrize("corruption", ["qweight shape", "scales missing", "group not dividing K"])
def test_corrupt_awq_checkpoint_gives_one_line_through_the_cli(awq_dir, tmp_path, capsys, corruption):
    """Check 6's three corruptions, as `tameshi ask` meets them: a non-zero exit and one line on stderr
    that names what is wrong, no traceback."""
    from safetensors.torch import load_file

    from tameshi.cli import main

    folder, _ = awq_dir
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    tensors = load_file(folder / "model.safetensors")
    name = "model.layers.1.self_attn.o_proj"
    if corruption == "qweight shape":
        tensors[name + ".qweight"] = tensors[name + ".qweight"][:, :-1].contiguous()
        expect = name + ".qweight"
    elif corruption == "scales missing":
        del tensors[name + ".scales"]
        expect = name + ".scales"
    else:  # in_features 128 (hidden) is not a multiple of 96
        (bad / "quant_config.json").write_text(
            json.dumps({"zero_point": True, "q_group_size": 96, "w_bit": 4, "version": "GEMM"})
        )
        expect = "group size 96"
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    code = main(["ask", "Hello", "--model", str(bad), "-n", "2", "--greedy"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "Traceback" not in err, err
    assert expect in lines[0], lines[0]


FIXTURE = Path(__file__).parent / "fixtures" / "awq-tiny"  # made by real AutoAWQ 0.2.9: see its README


def test_autoawq_fixture_logits_and_dequant():
    """A checkpoint quantized and saved by AutoAWQ itself, with AutoAWQ's own outputs beside it."""
    from safetensors import safe_open

    model = _load(FIXTURE)
    with safe_open(str(FIXTURE / "reference" / "expected.safetensors"), "pt") as f:
        expected = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    # the q_proj shard of the fused qkv, dequantized our way, against AutoAWQ's dequantize_gemm (fp16)
    qkv = model.layers[0].self_attn.qkv_proj
    ours = qkv.dense_weight()[:128].t()  # [K, N] like AutoAWQ
    torch.testing.assert_close(ours, expected["dequant_q_proj"], atol=2e-4, rtol=1e-3)
    for i in range(3):
        ids = expected[f"input_ids_{i}"][0]
        got = _logits(model, ids)
        # transformers in float32 on AutoAWQ-dequantized weights. AutoAWQ dequantizes in fp16, we in fp32
        # (dequantizing in fp16 our way gives exactly 0 difference); logits span about +-45.
        torch.testing.assert_close(got, expected[f"logits_dequant_f32_{i}"][0], atol=0.05, rtol=0)
        # AutoAWQ's own fp16 forward: within fp16 noise, and the same argmax everywhere
        autoawq = expected[f"logits_{i}"][0]
        assert (got - autoawq).abs().max() < 0.1
        assert torch.equal(got.argmax(-1), autoawq.argmax(-1))
