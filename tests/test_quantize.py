"""`tameshi quantize --method rtn`: writes AutoAWQ GEMM checkpoints that load back to the same numbers."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tameshi.errors import InvalidRequestError
from tameshi.loading.awq import unpack_gemm
from tameshi.quantize.quantize import quantize_model
from tameshi.quantize.writer import awq_quantize_rtn

transformers = pytest.importorskip("transformers")
FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures" / "deepseek-llm"
HELD_OUT = (
    "The river ran quietly past the old mill, where the miller's daughter counted sacks of flour each "
    "morning before the sun came over the hills. Nobody in the village remembered when the wheel had "
    "last stopped turning, and the children believed it never would."
)


def _logits(model, ids):
    from tameshi.engine.kv_cache import ContiguousKVCache

    cache = ContiguousKVCache(model.config, len(ids), ids.device, torch.float32)
    cache.begin_step(len(ids))
    with torch.inference_mode():
        return model.compute_logits(model(ids, torch.arange(len(ids)), cache))


def test_rtn_checkpoint_round_trips(tmp_path):
    cfg = transformers.LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    src = tmp_path / "src"
    ref.save_pretrained(src)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(FIXTURE_TOKENIZER / name, src / name)
    out = quantize_model(str(src), tmp_path / "out", method="rtn", group_size=64)
    assert json.loads((out / "quant_config.json").read_text())["q_group_size"] == 64

    # the stored codes read back (AutoAWQ's unpack, which the AutoAWQ fixture test pins) as the quantizer's
    w = ref.model.layers[1].mlp.up_proj.weight.detach()
    q, z, s = awq_quantize_rtn(w, 64)
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(str(out / index["model.layers.1.mlp.up_proj.qweight"]), "pt") as f:
        assert torch.equal(unpack_gemm(f.get_tensor("model.layers.1.mlp.up_proj.qweight")).t().int(), q)

    # and the loaded model computes what transformers computes on the dequantized weights
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "layers" in name and name.endswith("proj.weight"):
                q, z, s = awq_quantize_rtn(p, 64)
                deq = (q.reshape(q.shape[0], -1, 64) - z[..., None]) * s.float()[..., None]
                p.copy_(deq.reshape(p.shape))
            else:
                p.copy_(p.half().float())
    from tameshi import LLM

    llm = LLM(str(out), progress=False)
    ids = torch.randint(0, 512, (20,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(ids[None]).logits[0]
    torch.testing.assert_close(_logits(llm.loaded.model, ids), expected, atol=1e-4, rtol=1e-4)


def test_awq_beats_rtn_on_held_out_text(tmp_path):
    """Check 3: the embedded default quantized with AWQ has lower perplexity than with RTN, both near fp32."""
    from tameshi import LLM

    exact = LLM(progress=False)
    rtn = LLM(str(quantize_model(None, tmp_path / "rtn", method="rtn", group_size=64)), progress=False)
    # 64 tokens per search loss keeps this test at ~30 s on 2 cores; the CLI default is 512
    awq_dir = quantize_model(None, tmp_path / "awq", method="awq", group_size=64, search_tokens=64)
    awq = LLM(str(awq_dir), progress=False)
    ids = torch.tensor(exact.tokenizer.encode(HELD_OUT))

    def ppl(llm):
        logits = _logits(llm.loaded.model, ids)
        return torch.exp(torch.nn.functional.cross_entropy(logits[:-1], ids[1:])).item()

    p_exact, p_rtn, p_awq = ppl(exact), ppl(rtn), ppl(awq)
    print(f"perplexity on held-out text: fp32 {p_exact:.2f}, awq g64 {p_awq:.2f}, rtn g64 {p_rtn:.2f}")
    assert p_awq < p_rtn
    assert p_awq < 1.25 * p_exact and p_rtn < 1.5 * p_exact


def test_quantize_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(InvalidRequestError, match="unknown method"):
        quantize_model(None, tmp_path / "x", method="gptq")
    with pytest.raises(InvalidRequestError, match="group size 128"):
        quantize_model(None, tmp_path / "y", group_size=128)
