"""Check 7: each bad input gives one clear sentence on stderr, a non-zero exit and no traceback."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from tameshi.cli import main
from tameshi.loading.default import default_model_dir

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama with the embedded model's tokenizer: loads in a blink."""
    folder = tmp_path_factory.mktemp("tiny")
    default = default_model_dir(progress=False)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default / name, folder / name)
    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=49152, max_position_embeddings=128,
    )  # fmt: skip
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip()


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _copy(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def test_the_tiny_model_itself_loads(tiny_dir, capsys):
    code, _ = _run(["info", "--model", str(tiny_dir)], capsys)
    assert code == 0


def test_missing_path(capsys, tmp_path):
    code, err = _run(["ask", "hi", "--model", str(tmp_path / "nope")], capsys)
    assert code != 0 and "no such file or folder" in _one_line(err)


def test_folder_without_config(capsys, tmp_path):
    code, err = _run(["ask", "hi", "--model", str(tmp_path)], capsys)
    assert code != 0 and "config.json" in _one_line(err)


def test_corrupt_config(tiny_dir, tmp_path, capsys):
    d = _copy(tiny_dir, tmp_path)
    (d / "config.json").write_text("{not json")
    code, err = _run(["info", "--model", str(d)], capsys)
    assert code != 0 and "not valid JSON" in _one_line(err)


def test_truncated_safetensors(tiny_dir, tmp_path, capsys):
    d = _copy(tiny_dir, tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    code, err = _run(["info", "--model", str(d)], capsys)
    assert code != 0 and "model.safetensors" in _one_line(err)


def test_garbage_safetensors(tiny_dir, tmp_path, capsys):
    d = _copy(tiny_dir, tmp_path)
    (d / "model.safetensors").write_bytes(b"\x00" * 100)
    code, err = _run(["info", "--model", str(d)], capsys)
    assert code != 0 and "safetensors" in _one_line(err)


def test_mismatched_shapes(tiny_dir, tmp_path, capsys):
    d = _copy(tiny_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    code, err = _run(["info", "--model", str(d)], capsys)
    line = _one_line(err)
    assert code != 0 and "shape" in line and "mlp" in line


def test_missing_tensor(tiny_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    d = _copy(tiny_dir, tmp_path)
    tensors = load_file(d / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    code, err = _run(["info", "--model", str(d)], capsys)
    assert code != 0 and "model.layers.1.mlp.down_proj.weight" in _one_line(err)


def test_unsupported_architecture(tiny_dir, tmp_path, capsys):
    d = _copy(tiny_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    code, err = _run(["info", "--model", str(d)], capsys)
    assert code != 0 and "unsupported architecture GPT2LMHeadModel" in _one_line(err)


def test_pickled_bin_weights_are_refused(tiny_dir, tmp_path, capsys):
    d = _copy(tiny_dir, tmp_path)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"would be unpickled by a careless loader")
    code, err = _run(["info", "--model", str(d)], capsys)
    assert code != 0 and "never loads" in _one_line(err)


def test_hub_id_not_cached(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    code, err = _run(["ask", "hi", "--model", "deepseek-ai/deepseek-llm-7b-chat"], capsys)
    line = _one_line(err)
    assert code != 0 and "not in the local Hugging Face cache" in line and "hf download" in line


def test_corrupt_gguf(tmp_path, capsys):
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"GGUF" + b"\xff" * 64)
    code, err = _run(["info", "--model", str(f)], capsys)
    assert code != 0 and "broken.gguf" in _one_line(err)


def test_bad_sampling_value(tiny_dir, capsys):
    code, err = _run(["ask", "hi", "--model", str(tiny_dir), "--top-p", "1.5"], capsys)
    assert code != 0 and "top_p" in _one_line(err)


def test_real_entry_point_exit_code_and_debug(tmp_path):
    cmd = [sys.executable, "-m", "tameshi", "info", "--model", str(tmp_path / "nope")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "no such file" in r.stderr
    r = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_load_on_meta_then_stream(tiny_dir):
    """The loaded weights equal the checkpoint's (nothing left uninitialised by to_empty)."""
    from safetensors.torch import load_file

    from tameshi.api import LLM

    llm = LLM(str(tiny_dir), progress=False)
    ref = load_file(tiny_dir / "model.safetensors")
    layer = llm.loaded.model.layers[0]
    torch.testing.assert_close(
        layer.self_attn.qkv_proj.weight[:32], ref["model.layers.0.self_attn.q_proj.weight"]
    )
    torch.testing.assert_close(layer.mlp.down_proj.weight, ref["model.layers.0.mlp.down_proj.weight"])


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--device", "meta"], "runs on cpu or cuda"),
        (["--dtype", "int3"], "unknown dtype 'int3'"),
        (["--tp", "0"], "tp must be a whole number"),
    ]
    + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "sees no CUDA GPU")]),
)
def test_bad_device_dtype_or_tp_is_one_line_not_an_internal_error(tiny_dir, capsys, flags, said):
    assert main(["ask", "-m", str(tiny_dir), "Hi", "-n", "2", *flags]) == 1
    err = capsys.readouterr().err
    assert said in err and "internal error" not in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("key", "value"), [("max_position_embeddings", 0), ("rope_theta", -1), ("rms_norm_eps", float("nan"))]
)
def test_a_config_value_out_of_range_is_named(tiny_dir, tmp_path, capsys, key, value):
    """A context of 0 tokens failed later as "no memory left for even one KV block"; a negative rope
    theta ran and answered nothing. Each is now named with its value."""
    d = _copy(tiny_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg[key] = value
    if key in (cfg.get("rope_parameters") or {}):  # transformers 5 writes theta there
        cfg["rope_parameters"][key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    code, err = _run(["info", "--model", str(d)], capsys)
    assert code != 0 and f"config.json has {key}" in _one_line(err)
