"""A tiny random Llama written as a Hugging Face folder, for tests that need a real checkpoint."""

import shutil
from pathlib import Path

import torch

FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures" / "deepseek-llm"


def write_tiny_llama(folder: Path, **config):
    """Save a random GQA Llama (seed 0; `config` overrides the small defaults) with the DeepSeek-LLM
    fixture tokenizer and template into `folder`; return the transformers model (fp32, eval)."""
    import transformers

    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(FIXTURE_TOKENIZER / name, folder / name)
    cfg = transformers.LlamaConfig(**{
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 8,
        "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 512, "initializer_range": 0.2,
        **config,
    })  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.save_pretrained(folder)
    return model
