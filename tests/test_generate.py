"""Check 2 and the generation contract: greedy ids equal transformers on the embedded default;
streaming equals non-streaming; stop strings never leak; finish reasons are honest."""

import pytest
import torch

from tameshi import LLM, SamplingParams
from tameshi.loading.default import default_gguf_path

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "日本の首都はどこですか？",
]


@pytest.fixture(scope="module")
def llm():
    return LLM(progress=False)


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    path = default_gguf_path()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    return tok, model


def test_greedy_ids_equal_transformers_on_the_embedded_gguf(llm, hf):
    tok, model = hf
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        ref_ids = tok.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        ref_ids = list(ref_ids["input_ids"] if isinstance(ref_ids, dict) else ref_ids)
        assert llm.encode_chat(messages) == ref_ids
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ref_ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False
            )
        expected = out[0, len(ref_ids) :].tolist()
        got = llm.generate(ref_ids, SamplingParams(max_new_tokens=32, min_new_tokens=32, do_sample=False))
        assert got.token_ids == expected, prompt
        assert got.finish_reason == "length"


def test_stream_equals_full_and_reports_length(llm):
    params = SamplingParams(max_new_tokens=20, do_sample=False)
    full = llm.ask("Tell me about Mount Fuji.", params)
    chunks = list(llm.ask("Tell me about Mount Fuji.", params, stream=True))
    assert "".join(c.text for c in chunks) == full.text
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == full.finish_reason == "length"
    assert sum(len(c.token_ids) for c in chunks) == full.completion_tokens == 20


def test_stop_string_ends_the_answer_and_never_leaks(llm):
    params = SamplingParams(max_new_tokens=40, do_sample=False)
    full = llm.ask("Describe the ocean in two sentences.", params).text
    words = full.split()
    assert len(words) > 6
    stop = " " + words[5]  # a stop string somewhere mid-answer, spanning tokens
    cut = llm.ask(
        "Describe the ocean in two sentences.",
        SamplingParams(max_new_tokens=40, do_sample=False, stop=[stop]),
    )
    assert cut.finish_reason == "stop"
    assert stop not in cut.text
    assert full.startswith(cut.text) and full[len(cut.text) :].startswith(stop)
    streamed = "".join(
        c.text
        for c in llm.ask(
            "Describe the ocean in two sentences.",
            SamplingParams(max_new_tokens=40, do_sample=False, stop=[stop]),
            stream=True,
        )
    )
    assert streamed == cut.text


def test_eos_gives_stop(llm):
    out = llm.ask("Say hi.", SamplingParams(max_new_tokens=200, do_sample=False))
    assert out.finish_reason == "stop"
    assert out.token_ids[-1] in llm.tokenizer.eos_token_ids
    assert "<|im_end|>" not in out.text


def test_seeded_sampling_repeats(llm):
    params = SamplingParams(max_new_tokens=16, do_sample=True, temperature=1.0, top_p=0.95, seed=7)
    a = llm.ask("Name a fruit.", params)
    b = llm.ask("Name a fruit.", params)
    assert a.token_ids == b.token_ids


def test_notebook_dict_is_accepted(llm):
    params = {
        "max_new_tokens": 8,
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "do_sample": True,
    }
    out = llm.ask("Hello!", params)
    assert out.completion_tokens <= 8


def test_prompt_over_context_is_refused(llm):
    from tameshi.errors import PromptTooLongError

    with pytest.raises(PromptTooLongError, match="context window"):
        llm.generate([1] * (llm.engine.max_model_len + 5))
