"""Output processing of one request: text deltas, stop strings, stop tokens, finish reasons."""

import pytest

from tameshi.engine.sequence import Sequence
from tameshi.loading.default import default_model_dir
from tameshi.sampling_params import SamplingParams
from tameshi.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(default_model_dir(progress=False))


def _feed(tok, ids, **params):
    p = SamplingParams(**params).resolve({})
    seq = Sequence(0, [1], p, tok, max_model_len=10_000)
    outs = []
    for i in ids:
        outs.append(seq.append(i))
        if seq.finished:
            break
    return seq, outs


def _byte_tokens(tok, text):
    """Ids that split `text` byte by byte (byte-level BPE has a token per byte)."""
    return [
        i for b in text.encode() for i in tok.encode(bytes([b]).decode("latin-1"), add_special_tokens=False)
    ]


def test_no_replacement_char_in_any_prefix_and_none_at_a_length_cut(tok):
    text = "日本語のテキスト、絵文字🎌も。"
    ids = tok.encode(text, add_special_tokens=False)
    _, outs = _feed(tok, ids, max_new_tokens=len(ids))
    prefix = ""
    for o in outs:
        prefix += o.text
        assert "\ufffd" not in prefix
    assert prefix == text and outs[-1].finish_reason == "length"
    # cut in the middle of a 3-byte character: the partial bytes are dropped, not shown as "�"
    cut = tok.encode("日本", add_special_tokens=False)
    partial = tok.encode("語", add_special_tokens=False)
    if len(partial) > 1:
        _seq, outs = _feed(tok, cut + partial[:1], max_new_tokens=len(cut) + 1)
        assert "".join(o.text for o in outs) == "日本"


def test_stop_string_spanning_tokens_never_leaks_while_streaming(tok):
    text = "The answer is 42.\n\nUser: next question"
    ids = tok.encode(text, add_special_tokens=False)
    _seq, outs = _feed(tok, ids, max_new_tokens=100, stop=["\n\nUser:"])
    streamed = ""
    for o in outs:
        streamed += o.text
        assert "\n" not in streamed  # the start of the stop string is held back, then dropped
    assert streamed == "The answer is 42."
    assert outs[-1].finish_reason == "stop"


def test_eos_and_extra_stop_ids(tok):
    ids = tok.encode("Hello there", add_special_tokens=False)
    seq, outs = _feed(tok, [*ids, tok.eos_token_ids[0], *ids], max_new_tokens=100)
    assert "".join(o.text for o in outs) == "Hello there" and seq.finish_reason == "stop"
    assert seq.output_ids[-1] == tok.eos_token_ids[0]
    seq, outs = _feed(tok, [*ids, *ids], max_new_tokens=100, stop_token_ids=[ids[-1]])
    assert seq.finish_reason == "stop" and seq.n_generated == len(ids)


def test_ignore_eos_runs_to_length(tok):
    eos = tok.eos_token_ids[0]
    seq, _outs = _feed(tok, [eos] * 5, max_new_tokens=5, ignore_eos=True)
    assert seq.finish_reason == "length" and seq.n_generated == 5
