"""The sampler against transformers' own logits processors and its `generate` sampling loop."""

import dataclasses
import itertools
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from transformers.generation.utils import GenerationMixin  # noqa: E402

from tameshi.engine.sampler import Sampler, make_generator, process_logits, token_logprobs  # noqa: E402
from tameshi.sampling_params import SamplingParams  # noqa: E402

VOCAB = 1000
EOS = 7


class _NoModel:
    """All that `GenerationMixin._get_logits_processor` reads from the model for a decoder-only LM."""

    config = SimpleNamespace(is_encoder_decoder=False)
    _merge_criteria_processor_list = GenerationMixin._merge_criteria_processor_list


def hf_scores(logits: torch.Tensor, history: torch.Tensor, params: SamplingParams, prompt_len: int):
    """One row processed by the processor list transformers' `generate` would build for `params`."""
    config = transformers.GenerationConfig(
        do_sample=params.do_sample,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
        repetition_penalty=params.repetition_penalty,
        min_new_tokens=params.min_new_tokens,
    )
    config._eos_token_tensor = torch.tensor(
        [EOS], device=logits.device
    )  # what generate sets from eos_token_id
    processors = GenerationMixin._get_logits_processor(
        _NoModel(), config, input_ids_seq_length=prompt_len, device=logits.device
    )
    return processors(history[None], logits[None].to(torch.float32))[0]


def tied_logits(seed: int, batch: int = 1) -> torch.Tensor:
    """Logits rounded to 0.25 so many values tie (also at top-k/top-p cut points), with zeros and negatives."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, VOCAB, generator=g) * 3).mul(4).round().div(4)
    logits[:, :20] = 0.0
    return logits


def random_history(seed: int, length: int = 60) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, VOCAB, (length,), generator=g)


def assert_same_scores(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.dtype == torch.float32
    assert torch.equal(torch.isneginf(ours), torch.isneginf(reference))
    finite = torch.isfinite(reference)
    torch.testing.assert_close(ours[finite], reference[finite], rtol=0, atol=1e-6)


NOTEBOOK_GRID = list(
    itertools.product(
        [0.7, 1.0, 1.3],  # temperature
        [1.0, 0.95, 0.5],  # top_p
        [0, 1, 40, 50],  # top_k
        [1.0, 1.1, 0.9],  # repetition_penalty
        [True, False],  # do_sample
        [None, 0.05],  # min_p
    )
)


CUDA = pytest.param(
    "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")]
)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_every_notebook_combination_equals_transformers(device):
    logits, history = tied_logits(0)[0].to(device), random_history(0).to(device)
    for temperature, top_p, top_k, penalty, do_sample, min_p in NOTEBOOK_GRID:
        params = SamplingParams(
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=penalty,
            min_p=min_p,
        ).resolve(None)
        ours = process_logits(logits[None], [history], [params])[0]
        reference = hf_scores(logits, history, params, prompt_len=len(history))
        assert_same_scores(ours, reference)
        # stronger than asked: bit-equal scores give bit-equal softmax, so a seeded draw cannot flip
        assert torch.equal(ours, reference), (temperature, top_p, top_k, penalty, do_sample, min_p)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_are_processed_in_float32(dtype):
    logits, history = tied_logits(1)[0].to(dtype), random_history(1)
    params = SamplingParams(do_sample=True, temperature=0.7, top_p=0.95, top_k=40, repetition_penalty=1.1)
    params = params.resolve(None)
    ours = process_logits(logits[None], [history], [params])[0]
    assert_same_scores(ours, hf_scores(logits, history, params, prompt_len=len(history)))


def test_min_new_tokens_masks_eos_like_transformers():
    logits, history = tied_logits(2)[0], random_history(2)
    logits[EOS] = 50.0  # EOS would otherwise win
    params = SamplingParams(do_sample=False, min_new_tokens=5).resolve(None)
    for n_generated in (0, 4, 5, 9):
        prompt_len = len(history) - n_generated
        ours = process_logits(logits[None], [history], [params], [n_generated], [(EOS,)])[0]
        assert_same_scores(ours, hf_scores(logits, history, params, prompt_len=prompt_len))
        assert torch.isneginf(ours[EOS]) == (n_generated < 5)


def test_min_new_tokens_also_holds_back_stop_token_ids():
    params = SamplingParams(min_new_tokens=2, stop_token_ids=[3]).resolve(None)
    ours = process_logits(torch.zeros(1, 10), [torch.tensor([1])], [params], [0], [(EOS,)])[0]
    assert torch.isneginf(ours[[3, EOS]]).all() and torch.isfinite(ours).sum() == 8


def test_mixed_batch_equals_each_row_alone():
    rows = [
        SamplingParams(do_sample=True, temperature=0.7, top_p=0.95, top_k=40, repetition_penalty=1.1),
        SamplingParams(do_sample=False, repetition_penalty=1.3),
        SamplingParams(do_sample=True, temperature=1.3, top_p=0.5, top_k=0),
        SamplingParams(do_sample=True, temperature=1.0, top_k=1),
        SamplingParams(do_sample=True, temperature=0.9, top_p=1.0, top_k=0, min_p=0.1),
        SamplingParams(do_sample=True, temperature=0.0),  # temperature 0 is greedy
        SamplingParams(do_sample=True, temperature=0.7, top_p=0.95, min_new_tokens=3),
        SamplingParams(do_sample=True, temperature=0.5, top_p=1.0, top_k=0),  # see the spread below
    ]
    params = [p.resolve({"top_k": 20}) for p in rows]
    logits = tied_logits(3, batch=len(params))
    # probabilities that underflow to exactly 0 must survive top_p=1.0 although a neighbour row runs top-p
    logits[-1] *= 30
    history = [random_history(10 + i, length=5 + 13 * i) for i in range(len(params))]
    n_generated, eos_ids = [0] * len(params), [(EOS,)] * len(params)
    batch = process_logits(logits, history, params, n_generated, eos_ids)
    for i, p in enumerate(params):
        alone = process_logits(logits[i : i + 1], [history[i]], [p], [0], [(EOS,)])[0]
        assert torch.equal(batch[i], alone)
        if not p.greedy or p.do_sample is False:  # HF rejects temperature 0, so only compare the others
            assert_same_scores(batch[i], hf_scores(logits[i], history[i], p, prompt_len=len(history[i])))


def test_process_logits_leaves_the_callers_tensor_alone():
    logits = tied_logits(4)
    before = logits.clone()
    params = SamplingParams(do_sample=True, top_k=3, repetition_penalty=1.2).resolve(None)
    process_logits(logits, [random_history(4)], [params])
    assert torch.equal(logits, before)


def test_empty_history_and_ids_beyond_the_vocabulary_are_harmless():
    params = SamplingParams(repetition_penalty=1.5).resolve(None)
    logits = tied_logits(5, batch=2)
    history = [torch.tensor([], dtype=torch.long), torch.tensor([3, VOCAB + 5])]
    out = process_logits(logits, history, [params, params])
    assert torch.equal(out[0], logits[0])
    changed = (out[1] != logits[1]).nonzero().flatten().tolist()
    assert changed == ([3] if logits[1, 3] != 0 else [])


def sampled_params(seed: int | None = None) -> SamplingParams:
    return SamplingParams(
        do_sample=True, temperature=1.3, top_p=0.95, top_k=200, repetition_penalty=1.1, seed=seed
    ).resolve(None)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_seeded_sampling_repeats_and_matches_torch_manual_seed(device):
    logits, history = tied_logits(6).to(device), [random_history(6).to(device)]
    params = sampled_params(seed=1234)
    reference = hf_scores(logits[0], history[0], params, prompt_len=len(history[0]))
    torch.manual_seed(1234)  # what a notebook does before generate; seeds the CUDA generators too
    expected = [torch.multinomial(torch.softmax(reference[None], dim=-1), 1).item() for _ in range(20)]
    sampler = Sampler()
    generator = make_generator(1234, device)
    ours = [sampler(logits, history, [params], [generator]).item() for _ in range(20)]
    assert ours == expected
    again = make_generator(1234, device)
    assert [sampler(logits, history, [params], [again]).item() for _ in range(20)] == expected
    other = make_generator(4321, device)
    assert [sampler(logits, history, [params], [other]).item() for _ in range(20)] != expected


def test_seeded_row_is_independent_of_its_batch_neighbours():
    logits = tied_logits(7, batch=3)
    history = [random_history(7 + i) for i in range(3)]
    params = [sampled_params(seed=5), sampled_params(), SamplingParams().resolve(None)]
    sampler = Sampler()
    alone = sampler(logits[:1], history[:1], params[:1], [make_generator(5, "cpu")])
    torch.manual_seed(0)  # the unseeded neighbour draws from the global generator, not from row 0's
    batch = sampler(logits, history, params, [make_generator(5, "cpu"), None, None])
    assert batch[0] == alone[0]
    assert batch[2] == process_logits(logits[2:], history[2:], params[2:])[0].argmax()
    assert batch.dtype == torch.long and batch.shape == (3,)


def test_unseeded_rows_differ_between_calls():
    logits, history = torch.zeros(1, VOCAB), [torch.tensor([0])]
    params = SamplingParams(do_sample=True, top_k=0).resolve(None)  # uniform over 1000 tokens
    draws = {Sampler()(logits, history, [params], [None]).item() for _ in range(10)}
    assert len(draws) > 1


def test_replays_transformers_generate_on_a_tiny_model():
    """Same seed, same logits: our ids equal HF `generate`'s at every step of a real sampling loop."""
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    prompt = torch.randint(0, VOCAB, (1, 12))
    params = SamplingParams(**{**_NOTEBOOK, "max_new_tokens": 16, "seed": 99}).resolve(None)
    hf_args = {
        k: getattr(params, k) for k in ("do_sample", "temperature", "top_p", "top_k", "max_new_tokens")
    }
    torch.manual_seed(99)
    out = model.generate(
        prompt,
        **hf_args,
        repetition_penalty=params.repetition_penalty,
        eos_token_id=None,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    generator, sampler = make_generator(params.seed, "cpu"), Sampler()
    sequence = out.sequences[0]
    for step, raw_logits in enumerate(out.logits):
        history = sequence[: prompt.shape[1] + step]
        ours = sampler(raw_logits, [history], [params], [generator])
        assert ours.item() == sequence[prompt.shape[1] + step].item(), f"step {step}"


_NOTEBOOK = {
    "max_new_tokens": 512,
    "temperature": 0.7,
    "top_p": 0.95,
    "top_k": 40,
    "repetition_penalty": 1.1,
    "do_sample": True,
}


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.floats(-50, 50, width=32), st.just(0.0), st.just(float("-inf"))), min_size=2, max_size=64
    ),
    history=st.lists(st.integers(0, 63), max_size=20),
    temperature=st.sampled_from([0.0, 0.1, 0.7, 1.0, 1.3, 5.0]),
    top_p=st.sampled_from([0.01, 0.5, 0.95, 1.0]),
    top_k=st.sampled_from([0, 1, 3, 50]),
    min_p=st.sampled_from([None, 0.0, 0.2, 1.0]),
    penalty=st.sampled_from([0.5, 1.0, 1.1, 2.0]),
    do_sample=st.booleans(),
)
def test_some_top_token_always_survives(
    values, history, temperature, top_p, top_k, min_p, penalty, do_sample
):
    logits = torch.tensor(values, dtype=torch.float32)[None]
    if torch.isneginf(logits).all():
        logits[0, 0] = 0.0
    ids = torch.tensor([i for i in history if i < logits.shape[1]], dtype=torch.long)
    params = SamplingParams(
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repetition_penalty=penalty,
    ).resolve(None)
    out = process_logits(logits, [ids], [params])[0]
    penalised = process_logits(logits, [ids], [dataclasses.replace(params, do_sample=False)])[0]
    best = out.argmax()
    assert torch.isfinite(out[best])
    assert penalised[best] == penalised.max()  # the winner is a token that was on top before the warpers


def test_token_logprobs_are_the_raw_log_softmax():
    """Chosen-token logprob and top alternatives from the raw logits, whatever the sampler did to them."""
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(5)) * 3
    params = [
        SamplingParams(do_sample=True, temperature=0.5, top_k=3, logprobs=5).resolve(None),
        SamplingParams(do_sample=False).resolve(None),  # asks for none
        SamplingParams(do_sample=False, repetition_penalty=1.5, logprobs=0).resolve(None),
        SamplingParams(do_sample=True, top_p=0.5, logprobs=20).resolve(None),
    ]
    chosen = torch.tensor([11, 12, 13, 14])
    got = token_logprobs(logits.to(torch.bfloat16), chosen, params)
    expected = torch.log_softmax(logits.to(torch.bfloat16).float(), dim=-1)
    assert got[1] is None
    for row, n in ((0, 5), (2, 0), (3, 20)):
        lp = got[row]
        assert lp.token_id == int(chosen[row])
        assert lp.logprob == pytest.approx(expected[row, chosen[row]].item(), abs=1e-6)
        top = torch.topk(expected[row], n) if n else None
        assert [t for t, _ in lp.top] == ([] if top is None else top.indices.tolist())
        assert [v for _, v in lp.top] == pytest.approx([] if top is None else top.values.tolist(), abs=1e-6)


def test_tiny_temperatures_are_greedy():
    assert SamplingParams(do_sample=True, temperature=1e-30).greedy
    assert SamplingParams(do_sample=True, temperature=5e-324).greedy
    assert not SamplingParams(do_sample=True, temperature=1e-3).greedy


def test_non_finite_scores_draw_the_argmax_instead_of_raising():
    """What once ended the engine loop: a tiny repetition penalty overflows scores to inf -> NaN probs."""
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(9))
    logits[0, 5] = 50.0
    logits[2] = float("nan")
    history = [torch.tensor([5, 6]), torch.tensor([1]), torch.tensor([2])]
    params = [
        SamplingParams(do_sample=True, repetition_penalty=1e-40, seed=1).resolve(None),
        SamplingParams(do_sample=True, seed=2).resolve(None),
        SamplingParams(do_sample=True).resolve(None),
    ]
    generators = [make_generator(p.seed, "cpu") for p in params]
    ids = Sampler()(logits, history, params, generators)
    assert ids[0] == 5  # the overflowed row: its argmax
    reference = Sampler()(logits[1:2], history[1:2], params[1:2], [make_generator(2, "cpu")])
    assert ids[1] == reference[0]  # a healthy row in the same batch draws as it would alone
    assert 0 <= ids[2] < VOCAB
