"""The opt-in CPU weight-only modes: each packed kernel equals its PyTorch reference, Q4_1 weights
round-trip through int4, and the quantized model stays close to the exact one."""

import pytest
import torch

from tameshi.kernels.cpu_weight_only import INT4_GROUP, Int4Weight, Int8Weight, int4_dequantize, int4_quantize


def _bf16_matmul_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).float() @ w.t()


@pytest.mark.parametrize("shape", [(64, 128), (192, 576), (96, 1536)])
@pytest.mark.parametrize("rows", [1, 3, 17])
def test_int4_kernel_equals_reference(shape, rows):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g) * 0.05
    x = torch.randn(rows, shape[1], generator=g)
    q, scale, zero = int4_quantize(w)
    ref_w = int4_dequantize(q, scale, zero)
    # quantization error: at most half a step (plus the bf16 rounding of zero) per element
    step = scale.float().repeat_interleave(INT4_GROUP, dim=1)
    assert ((ref_w - w).abs() <= 0.5 * step + 0.01 * w.abs().amax()).all()
    got = Int4Weight(w)(x)
    expected = _bf16_matmul_reference(x, ref_w)
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())


@pytest.mark.parametrize("rows", [1, 5])
def test_int8_kernel_equals_reference(rows):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(96, 160, generator=g)
    x = torch.randn(rows, 160, generator=g)
    packed = Int8Weight(w)
    assert (packed.dequantize() - w).abs().max() <= w.abs().max() / 127
    expected = _bf16_matmul_reference(x, packed.dequantize())
    torch.testing.assert_close(packed(x), expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())


def test_q4_1_weights_round_trip_through_int4():
    """A weight dequantized from GGUF Q4_1 (w = d*q + m, bf16-exact d and m) comes back exactly."""
    g = torch.Generator().manual_seed(2)
    n, k = 32, 256
    q = torch.randint(0, 16, (n, k // 32, 32), generator=g)
    q[..., 0], q[..., 1] = (
        0,
        15,
    )  # each group spans the whole 4-bit range, as Q4_1's min/max construction gives
    d = (torch.rand(n, k // 32, 1, generator=g) * 0.01 + 1e-3).to(torch.bfloat16).float()
    m = (-8 * d).to(torch.bfloat16).float()  # centred groups keep zero = m + 8d exact in bf16
    w = (d * q + m).reshape(n, k)
    rq, scale, zero = int4_quantize(w)
    assert torch.equal(rq, q.reshape(n, k).int())
    torch.testing.assert_close(int4_dequantize(rq, scale, zero), w, rtol=0, atol=1e-7)


def test_quantized_model_stays_close_to_exact():
    from tameshi import LLM

    text = "The quick brown fox jumps over the lazy dog. Tokyo is the capital of Japan, and Kyoto was the old one."
    exact = LLM(progress=False)
    ids = exact.tokenizer.encode(text)

    def logits(llm):
        from tameshi.engine.kv_cache import ContiguousKVCache

        model = llm.loaded.model
        cache = ContiguousKVCache(model.config, len(ids), torch.device("cpu"), torch.float32)
        cache.begin_step(len(ids))
        with torch.inference_mode():
            return model.compute_logits(model(torch.tensor(ids), torch.arange(len(ids)), cache))

    ref = logits(exact)
    for method, min_agree in (("int8", 0.9), ("int4", 0.9)):
        got = logits(LLM(progress=False, quantize=method))
        agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
        print(f"{method}: top-1 agreement with fp32 {agree:.2%}")
        assert agree >= min_agree, method
