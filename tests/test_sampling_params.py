"""SamplingParams: HF spellings, defaults in generate's order, and one clear error per bad field."""

import dataclasses

import pytest

from tameshi.errors import InvalidRequestError
from tameshi.sampling_params import NOTEBOOK_PRESET, SamplingParams

DEEPSEEK_GENERATION_CONFIG = {
    "_from_model_config": True,
    "bos_token_id": 100000,
    "eos_token_id": 100001,
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.95,
    "transformers_version": "4.33.1",
}


def test_notebook_generate_kwargs_work_as_is():
    notebook = {
        "max_new_tokens": 512,
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "do_sample": True,
    }
    params = SamplingParams(**notebook)
    assert params == SamplingParams(**NOTEBOOK_PRESET)
    assert params.resolve(DEEPSEEK_GENERATION_CONFIG) == params.resolve(None)  # nothing left to fill
    assert not params.resolve(None).greedy


def test_resolve_takes_generation_config_then_hf_defaults():
    params = SamplingParams(top_k=10).resolve(DEEPSEEK_GENERATION_CONFIG)
    assert (params.do_sample, params.temperature, params.top_p) == (True, 0.7, 0.95)  # generation_config
    assert params.top_k == 10  # the request wins
    assert (params.repetition_penalty, params.max_new_tokens, params.min_p) == (1.0, 512, None)  # defaults


def test_resolve_defaults_are_hfs():
    params = SamplingParams().resolve(None)
    assert params.do_sample is False and params.greedy
    assert (params.temperature, params.top_k, params.top_p, params.repetition_penalty) == (1.0, 50, 1.0, 1.0)
    assert params.min_p is None and params.seed is None and params.max_new_tokens == 512


def test_resolve_skips_nulls_and_unknown_keys_in_generation_config():
    params = SamplingParams().resolve({"top_k": None, "max_length": 20, "temperature": 2})
    assert params.top_k == 50 and params.max_new_tokens == 512
    assert params.temperature == 2.0 and isinstance(params.temperature, float)


def test_greedy_when_not_sampling_or_temperature_zero():
    assert SamplingParams(do_sample=False, temperature=0.7).resolve(None).greedy
    assert SamplingParams(do_sample=True, temperature=0.0).resolve(None).greedy
    assert not SamplingParams(do_sample=True).resolve(None).greedy


def test_hf_aliases_fold_into_stop_fields():
    params = SamplingParams(
        stop="###", stop_strings=["User:", "###"], eos_token_id=[2, 100001], pad_token_id=0
    )
    assert params.stop == ("###", "User:")
    assert params.stop_token_ids == (2, 100001)
    assert params.eos_token_id is None and params.stop_strings is None and params.pad_token_id is None
    assert SamplingParams(eos_token_id=5, stop_token_ids=[5, 6]).stop_token_ids == (5, 6)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert params.resolve(None).stop == params.stop  # replace() must not fold twice


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", float("inf")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("top_k", 2.5),
        ("min_p", 1.1),
        ("min_p", -0.01),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("max_new_tokens", 0),
        ("max_new_tokens", 1.5),
        ("min_new_tokens", -1),
        ("logprobs", -1),
        ("logprobs", 1.5),
        ("logprobs", True),
        ("seed", 2**64),
        ("seed", "7"),
        ("do_sample", "yes"),
        ("temperature", "hot"),
        ("stop", [1, 2]),
        ("stop_token_ids", [-1]),
        ("eos_token_id", "eos"),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(InvalidRequestError, match=rf"^{field} must be"):
        SamplingParams(**{field: value})


def test_bad_generation_config_values_are_caught_by_resolve():
    with pytest.raises(InvalidRequestError, match=r"^top_p must be"):
        SamplingParams().resolve({"top_p": 0})


@pytest.mark.parametrize("seed", [0, -1, 2**63, 2**64 - 1])
def test_any_seed_torch_accepts_is_valid(seed):
    assert SamplingParams(seed=seed).resolve(None).seed == seed


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingParams().temperature = 1.0  # type: ignore[misc]
